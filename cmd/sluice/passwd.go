package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strings"

	"golang.org/x/term"

	"github.com/sluice-mta/sluice/internal/auth"
)

const passwdUsage = `Usage: sluice passwd USER [--tenant T] [--sender D]...

Reads a password (prompted twice without echo on a terminal, else the
first line of standard input) and prints a users file line for USER:

  USER:TENANT:$argon2id$v=19$m=19456,t=2,p=1$SALT$KEY:SENDERS

Append it to the file named by sluice.auth { users = ... }; a running
relay rereads the file within a second of a change.

  --tenant T   tenant of the user's mail and events (default: none)
  --sender D   allowed sender domain (example.com) or address
               (alerts@example.com); repeat or comma-separate; default: any
`

// runPasswd implements `sluice passwd`.
func runPasswd(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("passwd", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(stderr, passwdUsage) }
	tenant := fs.String("tenant", "", "tenant")
	var senders multiFlag
	fs.Var(&senders, "sender", "allowed sender domain or address; repeatable")
	pos, code, ok := parseInterspersed(fs, args)
	if !ok {
		return code
	}
	if len(pos) != 1 {
		fmt.Fprint(stderr, passwdUsage)
		return 2
	}
	u := &auth.User{Name: pos[0], Tenant: *tenant}
	if err := auth.CheckName(u.Name); err != nil {
		fmt.Fprintln(stderr, "sluice passwd:", err)
		return 2
	}
	if strings.ContainsAny(u.Tenant, ": \t") {
		fmt.Fprintln(stderr, "sluice passwd: --tenant must not contain ':' or spaces")
		return 2
	}
	for _, s := range senders {
		s = strings.ToLower(s)
		if err := auth.CheckSender(s); err != nil {
			fmt.Fprintln(stderr, "sluice passwd:", err)
			return 2
		}
		u.Senders = append(u.Senders, s)
	}
	pw, err := readPassword(stderr)
	if err != nil {
		fmt.Fprintln(stderr, "sluice passwd:", err)
		return 1
	}
	if u.Hash, err = auth.Hash(pw); err != nil {
		fmt.Fprintln(stderr, "sluice passwd:", err)
		return 1
	}
	if len(u.Senders) == 0 {
		fmt.Fprintln(stderr, "sluice passwd: note: no --sender given: this user may send from any address")
	}
	fmt.Fprintln(stdout, u.Line())
	return 0
}

// readPassword prompts twice on a terminal, else reads one line.
func readPassword(stderr io.Writer) (string, error) {
	if f := os.Stdin; term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(stderr, "Password: ")
		a, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		fmt.Fprint(stderr, "Again: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(stderr)
		if err != nil {
			return "", err
		}
		if string(a) != string(b) {
			return "", errors.New("the passwords differ")
		}
		return checkPassword(string(a))
	}
	line, err := bufio.NewReader(os.Stdin).ReadString('\n')
	if err != nil && !(errors.Is(err, io.EOF) && line != "") {
		return "", fmt.Errorf("reading the password from standard input: %w", err)
	}
	return checkPassword(strings.TrimRight(line, "\r\n"))
}

func checkPassword(pw string) (string, error) {
	if len(pw) < 8 {
		return "", errors.New("the password is shorter than 8 characters")
	}
	if len(pw) > 1024 {
		return "", errors.New("the password is longer than 1024 bytes")
	}
	return pw, nil
}
