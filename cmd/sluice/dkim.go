package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/sluice-mta/sluice/internal/dkim"
)

const dkimUsage = `Usage: sluice dkim keygen --domain D --selector S [--algo rsa|ed25519] [--out DIR] [--force]

Generates a DKIM signing key (RSA-2048 or Ed25519, RFC 8463), writes it
as DIR/D.S.pem (PKCS #8 PEM, mode 0600; DIR is created with mode 0700 if
missing) and prints the TXT record to publish:

  name:  S._domainkey.D
  value: v=DKIM1; k=rsa; p=...

followed by the record in zone-file form (strings of at most 255 octets).
Refer to the key file from sluice.builtin.dkim_sign (docs/dkim.md).

  --domain D     signing domain (d=); required
  --selector S   selector (s=); required
  --algo A       rsa (default: widest support) or ed25519
  --out DIR      where to write the key (default: the current directory)
  --force        overwrite an existing key file
`

// runDKIM implements `sluice dkim`.
func runDKIM(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 && (args[0] == "help" || args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprint(stdout, dkimUsage)
		return 0
	}
	if len(args) == 0 || args[0] != "keygen" {
		fmt.Fprint(stderr, dkimUsage)
		return 2
	}
	fset := flag.NewFlagSet("dkim keygen", flag.ContinueOnError)
	fset.SetOutput(stderr)
	fset.Usage = func() { fmt.Fprint(stderr, dkimUsage) }
	domain := fset.String("domain", "", "signing domain")
	selector := fset.String("selector", "", "selector")
	algo := fset.String("algo", dkim.AlgoRSA, "rsa or ed25519")
	out := fset.String("out", ".", "output directory")
	force := fset.Bool("force", false, "overwrite")
	pos, code, ok := parseInterspersed(fset, args[1:])
	if !ok {
		return code
	}
	d := dkim.NormalizeDomain(*domain)
	if len(pos) != 0 || d == "" || *selector == "" {
		fmt.Fprint(stderr, dkimUsage)
		return 2
	}
	if !validLabel(*selector, false) || !validLabel(d, false) {
		fmt.Fprintln(stderr, "sluice dkim keygen: --domain and --selector must be DNS names (letters, digits, '-', '.')")
		return 2
	}
	if *algo != dkim.AlgoRSA && *algo != dkim.AlgoEd25519 {
		fmt.Fprintf(stderr, "sluice dkim keygen: --algo %q: want rsa or ed25519\n", *algo)
		return 2
	}
	key, err := dkim.Generate(*algo)
	if err != nil {
		fmt.Fprintln(stderr, "sluice dkim keygen:", err)
		return 1
	}
	pemData, err := dkim.MarshalPrivateKey(key)
	if err == nil {
		err = os.MkdirAll(*out, 0o700)
	}
	path := filepath.Join(*out, d+"."+*selector+".pem")
	if err == nil {
		flags := os.O_WRONLY | os.O_CREATE | os.O_EXCL
		if *force {
			flags = os.O_WRONLY | os.O_CREATE | os.O_TRUNC
		}
		var f *os.File
		f, err = os.OpenFile(path, flags, 0o600)
		if errors.Is(err, fs.ErrExist) {
			err = fmt.Errorf("%s exists (use --force to overwrite)", path)
		}
		if err == nil {
			_, err = f.Write(pemData)
			if err == nil {
				err = f.Chmod(0o600) // also when --force reused a looser file
			}
			if err == nil {
				err = f.Sync()
			}
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
	}
	if err != nil {
		fmt.Fprintln(stderr, "sluice dkim keygen:", err)
		return 1
	}
	value, err := dkim.RecordValue(key)
	if err != nil {
		fmt.Fprintln(stderr, "sluice dkim keygen:", err)
		return 1
	}
	name := dkim.RecordName(d, *selector)
	fmt.Fprintf(stdout, "key:   %s\nname:  %s\nvalue: %s\n\n", path, name, value)
	parts := dkim.SplitTXT(value)
	fmt.Fprintf(stdout, "%s. IN TXT ( \"%s\" )\n", name, strings.Join(parts, "\"\n    \""))
	return 0
}

// validLabel reports whether s is a DNS name of letters, digits, '-' and
// '.' (one label only when single).
func validLabel(s string, single bool) bool {
	if s == "" || strings.HasPrefix(s, ".") || strings.HasSuffix(s, ".") || strings.Contains(s, "..") {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.' && !single) {
			return false
		}
	}
	return true
}
