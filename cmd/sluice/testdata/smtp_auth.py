#!/usr/bin/env python3
"""SMTP AUTH scenarios against a running sluice, with Python's smtplib.

Usage: smtp_auth.py HOST PORT. Prints one line per scenario:
NAME CODE ENHANCED-AND-TEXT (the reply that decided it), for the Go test
(cmd/sluice/auth_e2e_test.go) to check.
"""
import smtplib
import sys

host, port = sys.argv[1], int(sys.argv[2])


def out(name, code, msg):
    if isinstance(msg, bytes):
        msg = msg.decode("utf-8", "replace")
    print(name, code, " ".join(str(msg).split()), flush=True)


def conn():
    s = smtplib.SMTP(host, port, timeout=20)
    s.ehlo("client.test")
    return s


def login(name, user, password):
    s = conn()
    try:
        code, msg = s.login(user, password)
        out(name, code, msg)
    except smtplib.SMTPAuthenticationError as e:
        out(name, e.smtp_code, e.smtp_error)
    return s


def send(name, s, sender, rcpt, data):
    try:
        s.sendmail(sender, [rcpt], data)
        out(name, 250, "ok")
    except smtplib.SMTPSenderRefused as e:
        out(name, e.smtp_code, e.smtp_error)
    except smtplib.SMTPDataError as e:
        out(name, e.smtp_code, e.smtp_error)
        s.rset()
    except smtplib.SMTPRecipientsRefused as e:
        code, msg = list(e.recipients.values())[0]
        out(name, code, msg)


def msg(frm, subject):
    return "From: %s\r\nTo: bob@mx.test\r\nSubject: %s\r\n\r\nhello\r\n" % (frm, subject)


# AUTH is offered on loopback.
s = conn()
out("offered", 250 if "PLAIN" in s.esmtp_features.get("auth", "") else 0, s.esmtp_features.get("auth", ""))
# MAIL before AUTH on auth = "required".
code, m = s.mail("a@tenant-a.example")
out("mail-before-auth", code, m)
s.quit()

s = login("good-user", "alice", "alice-password-1")
send("own-domain", s, "app@tenant-a.example", "bob@mx.test", msg("app@tenant-a.example", "auth-e2e-ok"))
send("other-tenant-envelope", s, "ceo@tenant-b.example", "bob@mx.test", msg("app@tenant-a.example", "auth-e2e-env"))
send("other-tenant-from", s, "app@tenant-a.example", "bob@mx.test", msg("ceo@tenant-b.example", "auth-e2e-from"))
send("two-from", s, "app@tenant-a.example", "bob@mx.test",
     "From: app@tenant-a.example\r\nFrom: ceo@tenant-b.example\r\nSubject: two\r\n\r\nhi\r\n")
s.quit()

login("bad-password", "alice", "wrong-password").quit()
login("unknown-user", "mallory", "alice-password-1").quit()
login("lua-user", "luke", "from-lua").quit()

# LOGIN mechanism.
s = conn()
s.user, s.password = "bob", "bob-password-22"
try:
    code, m = s.auth("LOGIN", s.auth_login)
    out("login-mech", code, m)
except smtplib.SMTPAuthenticationError as e:
    out("login-mech", e.smtp_code, e.smtp_error)
send("bob-own-domain", s, "app@tenant-b.example", "bob@mx.test", msg("app@tenant-b.example", "auth-e2e-bob"))
s.quit()

# Three failures in one session: 421 and the connection is closed.
s = conn()
for i in range(3):
    s.user, s.password = "alice", "wrong-%d" % i
    try:
        code, m = s.auth("PLAIN", s.auth_plain)
        out("fail-%d" % (i + 1), code, m)
    except smtplib.SMTPAuthenticationError as e:
        out("fail-%d" % (i + 1), e.smtp_code, e.smtp_error)
try:
    code, m = s.noop()
    out("after-421", code, m)
except (smtplib.SMTPServerDisconnected, ConnectionError) as e:
    out("after-421", 0, "disconnected")
