package config

import (
	"strings"
	"testing"
)

func TestDANEWarning(t *testing.T) {
	for _, c := range []struct {
		d    Delivery
		want string
	}{
		{Delivery{}, ""},
		{Delivery{Resolver: "192.0.2.53:53"}, ""},
		{Delivery{DANE: true, Resolver: "127.0.0.1:53"}, ""},
		{Delivery{DANE: true, Resolver: "[::1]:53"}, ""},
		{Delivery{DANE: true, Resolver: "192.0.2.53:53"}, "not on loopback"},
		{Delivery{DANE: true, Resolver: "dns.example:53"}, "not on loopback"},
		{Delivery{DANE: true}, "/etc/resolv.conf"},
	} {
		got := c.d.DANEWarning()
		if (c.want == "") != (got == "") || !strings.Contains(got, c.want) {
			t.Errorf("%+v: DANEWarning = %q, want %q", c.d, got, c.want)
		}
	}
}
