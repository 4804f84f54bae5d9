# AUTH on a listener reached from a non-loopback address, with Python's
# smtplib: refused before STARTTLS (RFC 4954 section 6), offered and
# working after it. Usage: smtp_auth_tls.py HOST PORT USER PASSWORD
# Prints one "name reply" line per step for the Go test to check.
import base64, smtplib, ssl, sys

host, port, user, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
plain = base64.b64encode(b"\0" + user.encode() + b"\0" + password.encode()).decode()


def show(name, reply):
    print(name, reply[0], reply[1].decode())


s = smtplib.SMTP(host, port, timeout=30)
s.ehlo("client.test")
print("offered-before-tls", "yes" if s.has_extn("auth") else "no")
show("auth-before-tls", s.docmd("AUTH", "PLAIN " + plain))
show("mail-before-auth", s.docmd("MAIL", "FROM:<a@a.example>"))
ctx = ssl.create_default_context()
ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
s.starttls(context=ctx)
s.ehlo("client.test")
print("offered-after-tls", "yes" if s.has_extn("auth") else "no")
show("auth-after-tls", s.docmd("AUTH", "PLAIN " + plain))
show("mail-after-auth", s.docmd("MAIL", "FROM:<a@a.example>"))
s.quit()
