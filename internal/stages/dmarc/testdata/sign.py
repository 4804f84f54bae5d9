#!/usr/bin/python3
# Regenerates the signed golden messages (*.msg) with dkimpy, an
# independent DKIM implementation (Debian's python3-dkim):
#   cd internal/stages/dmarc/testdata && /usr/bin/python3 sign.py
# Keys: example.com.rsa1.pem and example.com.ed1.pem (sluice dkim keygen);
# their records are rsa1.txt and ed1.txt, served by each case's .dns file.
import base64, re, dkim

def pem_der(path):
    body = re.sub(r"-----[^-]+-----|\s", "", open(path).read())
    return base64.b64decode(body)

RSA = open("example.com.rsa1.pem", "rb").read()
ED = base64.b64encode(pem_der("example.com.ed1.pem")[-32:])  # the raw seed

def msg(frm, subject, body="Hello,\r\nthis is a test.\r\n", extra=""):
    return ("From: %s\r\nTo: bob@mx.test\r\nSubject: %s\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\n"
            "Message-ID: <%s@example.com>\r\n%s\r\n%s" % (frm, subject, subject, extra, body)).encode()

def sign(m, selector, key, algo, domain=b"example.com", length=False):
    sig = dkim.sign(m, selector, domain, key, signature_algorithm=algo, include_headers=[b"from", b"to", b"subject", b"date", b"message-id"], length=length,
                    canonicalize=(b"relaxed", b"relaxed"))
    return sig + m

def write(name, data):
    open(name + ".msg", "wb").write(data)

write("pass-all", sign(msg("Alice <alice@example.com>", "pass-all"), b"rsa1", RSA, b"rsa-sha256"))
write("spf-fail-dkim-aligned", sign(msg("alice@example.com", "spf-fail-dkim-aligned"), b"ed1", ED, b"ed25519-sha256"))
write("dmarc-fail-reject", msg("ceo@example.com", "dmarc-fail-reject"))
tampered = sign(msg("alice@example.com", "dkim-tampered"), b"rsa1", RSA, b"rsa-sha256").replace(b"this is a test", b"this is a TEST")
write("dkim-tampered", tampered)
write("dkim-length-tag", sign(msg("alice@example.com", "dkim-length-tag"), b"ed1", ED, b"ed25519-sha256", length=True))
write("subdomain-relaxed", sign(msg("news@news.example.com", "subdomain-relaxed"), b"ed1", ED, b"ed25519-sha256"))
write("spf-permerror-limit", msg("alice@limit.example", "spf-permerror-limit"))
write("spf-temperror", msg("alice@broken.example", "spf-temperror"))
write("two-from", msg("alice@example.com", "two-from", extra="From: other@example.com\r\n"))
