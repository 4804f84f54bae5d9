package luahost

import (
	"runtime"
	"runtime/metrics"
	"strings"
	"testing"

	"github.com/sluice-mta/sluice/internal/testutil"
	"github.com/sluice-mta/sluice/pipeline"
)

// BenchmarkLuaOnRcpt measures one on_rcpt call on a warm pool: state
// get/put, per-call deadline context, two userdata, field reads and a
// verdict.
func BenchmarkLuaOnRcpt(b *testing.B) {
	st, _, _ := benchStage(b, `on_rcpt = function(txn, rcpt)
    if rcpt.domain == "blocked.example" then
      return sluice.reject(550, "5.7.1", "blocked")
    end
    return sluice.accept()
  end`)
	h := st.(pipeline.RcptHook)
	txn := testTxn()
	r := rcpt(b, "bob@example.org")
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		v, err := h.OnRcpt(bg, txn, r)
		if err != nil || v.Action != pipeline.Accept {
			b.Fatal(v, err)
		}
	}
}

// BenchmarkLuaOnRcptParallel is BenchmarkLuaOnRcpt from GOMAXPROCS
// goroutines sharing the pool.
func BenchmarkLuaOnRcptParallel(b *testing.B) {
	st, _, _ := benchStage(b, `on_rcpt = function(txn, rcpt)
    if rcpt.domain == "blocked.example" then
      return sluice.reject(550, "5.7.1", "blocked")
    end
  end`)
	h := st.(pipeline.RcptHook)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		txn := testTxn()
		r := rcpt(b, "bob@example.org")
		for pb.Next() {
			if _, err := h.OnRcpt(bg, txn, r); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// BenchmarkLuaOnMessageAddHeader measures on_message adding one header
// (the header is removed again in Go between iterations so the message
// does not grow).
func BenchmarkLuaOnMessageAddHeader(b *testing.B) {
	st, _, _ := benchStage(b, `on_message = function(msg)
    msg:add_header("X-Sluice-Policy", "checked")
  end`)
	h := st.(pipeline.MessageHook)
	msg := testMsg(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := h.OnMessage(bg, msg); err != nil {
			b.Fatal(err)
		}
		msg.Header.Del("X-Sluice-Policy")
	}
}

// BenchmarkNewState is the cost of building one pooled state for a small
// configuration with one inline stage (paid when the pool is empty).
func BenchmarkNewState(b *testing.B) {
	_, h, _ := benchStage(b, `on_rcpt = function() end`)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		st, err := h.newState()
		if err != nil {
			b.Fatal(err)
		}
		st.close()
	}
}

// benchStage is inline with a 10s Lua timeout: benchmarks measure cost, and
// a shared, overloaded machine must not turn a scheduling stall into a
// failed iteration.
func benchStage(b *testing.B, body string) (pipeline.Stage, *Host, *logBuf) {
	h, stages, lb := setup(b, map[string]string{
		"pipeline.lua": "sluice.lua_options { timeout = \"10s\" }\nsluice.stage('s', {\n" + body + "\n})\n",
	})
	return stages["s"], h, lb
}

// BenchmarkLuaOnMessageGsubHeader is the normal path through the bounded
// string builtins: header:gsub("%s+", " ") and a find on a short header.
func BenchmarkLuaOnMessageGsubHeader(b *testing.B) {
	st, _, _ := benchStage(b, `on_message = function(msg)
    local s = msg:header("Subject"):gsub("%s+", " ")
    if s:find("^buy") then return sluice.reject() end
  end`)
	h := st.(pipeline.MessageHook)
	msg := testMsg(b)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := h.OnMessage(bg, msg); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkHookMemoryWorstCase measures how much memory one on_message
// call with a 100 ms deadline can hold when it keeps what it builds until
// the deadline stops it (the state is then discarded and the memory is
// garbage). It reports the peak of the live heap during the call
// (peak-MB/op, sampled every 2 ms by testutil.SamplePeakHeap) and the bytes allocated
// (alloc-MB/op). Each string is at most lua_options.max_string (1 MiB),
// so the bound is memory bandwidth: about 300 MB on a 2-core test box.
func BenchmarkHookMemoryWorstCase(b *testing.B) {
	for _, c := range []struct{ name, body string }{
		{"string.rep 1MiB kept", `local t = {} for i = 1, 1e9 do t[i] = string.rep("x", 2^20) end`},
		{"concat 1MiB kept", `local s = string.rep("x", 2^20 - 10) local t = {} for i = 1, 1e9 do t[i] = s .. i end`},
		{"upper 1MiB kept", `local s = string.rep("x", 2^20) local t = {} for i = 1, 1e9 do t[i] = s:upper() end`},
		{"list of numbers", `local t = {} for i = 1, 1e9 do t[#t+1] = i end`},
		{"list of tables", `local t = {} for i = 1, 1e9 do t[i] = {} end`},
	} {
		b.Run(c.name, func(b *testing.B) {
			_, stages, _ := setup(b, map[string]string{
				"pipeline.lua": "sluice.lua_options { timeout = \"100ms\" }\nsluice.stage('s', { on_message = function(msg)\n" + c.body + "\nend })\n",
			})
			h := stages["s"].(pipeline.MessageHook)
			msg := testMsg(b)
			var peakSum, allocSum uint64
			for i := 0; i < b.N; i++ {
				runtime.GC()
				s := []metrics.Sample{{Name: "/gc/heap/allocs:bytes"}, {Name: "/memory/classes/heap/objects:bytes"}}
				metrics.Read(s)
				a0, base := s[0].Value.Uint64(), s[1].Value.Uint64()
				stop := testutil.SamplePeakHeap()
				_, err := h.OnMessage(bg, msg)
				peak := stop()
				if err == nil || !strings.Contains(err.Error(), "did not finish within") {
					b.Fatalf("err = %v, want the deadline", err)
				}
				metrics.Read(s)
				allocSum += s[0].Value.Uint64() - a0
				if peak > base {
					peakSum += peak - base
				}
			}
			b.ReportMetric(float64(peakSum)/float64(b.N)/(1<<20), "peak-MB/op")
			b.ReportMetric(float64(allocSum)/float64(b.N)/(1<<20), "alloc-MB/op")
		})
	}
}
