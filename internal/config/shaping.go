package config

import (
	"crypto/sha256"
	"encoding/hex"
	"net/netip"
	"os"
	"slices"
	"time"

	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/internal/shaping"
)

// Shaping: sluice.shaping { files = { "shaping.toml" } }. Outbound traffic
// shaping per destination site (docs/shaping.md). nil: not configured,
// and delivery keeps one queue per recipient domain with the limits of
// sluice.delivery.
type Shaping struct {
	// Files are the shaping files (KumoMTA TOML format), later ones
	// overlaying earlier ones; paths relative to the configuration file.
	Files []string
	// Rules are the files as parsed at load, so that a bad file fails
	// the load (and sluice check) with its file, entry and key.
	Rules *shaping.Rules
	// Digest is the SHA-256 of the files' contents, in order: a reload
	// compares it to tell that the rules changed (they apply at restart).
	Digest string
}

// Same reports whether s and o load the same files with the same
// contents (nil for not configured).
func (s *Shaping) Same(o *Shaping) bool {
	if s == nil || o == nil {
		return s == o
	}
	return s.Digest == o.Digest && slices.Equal(s.Files, o.Files)
}

// Egress: sluice.egress { sources = {...}, pools = {...}, default_pool = "" }.
// Named egress sources (local address and EHLO name) grouped into pools;
// a route chooses the pool (sluice.route.mx { pool = "..." }). nil: every
// connection leaves from the host's own address.
type Egress struct {
	Sources     []shaping.Source
	Pools       map[string][]string
	DefaultPool string // the pool of routes that name none; "" : the host's own address
}

// sluice.shaping { files = { "shaping.toml", ... } }
func (ld *loader) shaping(L *lua.LState) int {
	const fn = "sluice.shaping"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "files")
	sh := &Shaping{}
	if !o.Strings("files", &sh.Files) || len(sh.Files) == 0 {
		o.Fail("files", "is required: a list of shaping files, e.g. { \"shaping.toml\" }")
	}
	for i, f := range sh.Files {
		sh.Files[i] = ld.resolve(f)
	}
	r, err := shaping.LoadFiles(sh.Files...)
	if err != nil {
		o.Fail("files", "%v", err)
	}
	sh.Rules = r
	h := sha256.New()
	for _, f := range sh.Files {
		b, _ := os.ReadFile(f) // LoadFiles read it just now
		h.Write(b)
		h.Write([]byte{0})
	}
	sh.Digest = hex.EncodeToString(h.Sum(nil))
	ld.cfg.Shaping = sh
	return 0
}

// sluice.egress { sources = { { name =, address =, helo =, warmup = { start =, steps = { { days =, daily = } } } } },
// pools = { { name =, sources = { ... } } }, default_pool = "" }
func (ld *loader) egress(L *lua.LState) int {
	const fn = "sluice.egress"
	ld.singleton(fn)
	o := ld.s.CheckOpts(1, fn, "sources", "pools", "default_pool")
	eg := &Egress{Pools: map[string][]string{}}
	names := map[string]bool{}
	for _, so := range o.List("sources", "name", "address", "helo", "warmup") {
		var src shaping.Source
		if !so.String("name", &src.Name) || !validName(src.Name) {
			so.Fail("name", "is required: a name of letters, digits, '-', '_' or '.' (at most 64)")
		}
		if names[src.Name] {
			so.Fail("name", "source %q is defined twice", src.Name)
		}
		names[src.Name] = true
		var addr string
		if !so.String("address", &addr) {
			so.Fail("address", "is required: the local IP address connections leave from")
		}
		ip, err := netip.ParseAddr(addr)
		if err != nil || ip.Zone() != "" {
			so.Fail("address", "%q is not an IP address", addr)
		}
		src.Address = ip.Unmap()
		if so.String("helo", &src.HELO) && !validHostname(src.HELO) {
			so.Fail("helo", "%q is not a host name", src.HELO)
		}
		if w := so.Sub("warmup", "start", "steps"); w != nil {
			var start string
			if !w.String("start", &start) {
				w.Fail("start", "is required: the first day of the schedule, \"YYYY-MM-DD\" (UTC)")
			}
			t, err := time.Parse("2006-01-02", start)
			if err != nil {
				w.Fail("start", "want a date \"YYYY-MM-DD\", got %q", start)
			}
			src.Warmup = &shaping.Warmup{Start: t}
			for _, st := range w.List("steps", "days", "daily") {
				var step shaping.WarmupStep
				ld.positive(st, "days", &step.Days)
				ld.positive(st, "daily", &step.Daily)
				if step.Days == 0 || step.Daily == 0 {
					st.Fail("days", "days and daily are both required")
				}
				src.Warmup.Steps = append(src.Warmup.Steps, step)
			}
			if len(src.Warmup.Steps) == 0 {
				w.Fail("steps", "is required: { { days = 3, daily = 500 }, ... }")
			}
		}
		eg.Sources = append(eg.Sources, src)
	}
	if len(eg.Sources) == 0 {
		o.Fail("sources", "is required: at least one { name =, address = }")
	}
	for _, po := range o.List("pools", "name", "sources") {
		var name string
		if !po.String("name", &name) || !validName(name) {
			po.Fail("name", "is required: a name of letters, digits, '-', '_' or '.' (at most 64)")
		}
		if _, dup := eg.Pools[name]; dup {
			po.Fail("name", "pool %q is defined twice", name)
		}
		var members []string
		if !po.Strings("sources", &members) || len(members) == 0 {
			po.Fail("sources", "is required: the names of the pool's sources")
		}
		for _, m := range members {
			if !names[m] {
				po.Fail("sources", "unknown source %q", m)
			}
		}
		eg.Pools[name] = members
	}
	if o.String("default_pool", &eg.DefaultPool) && eg.DefaultPool != "" {
		if _, ok := eg.Pools[eg.DefaultPool]; !ok {
			o.Fail("default_pool", "pool %q is not defined in pools", eg.DefaultPool)
		}
	}
	ld.cfg.Egress = eg
	return 0
}
