package smtpsrc

import "testing"

func TestScanDotCRAcrossReads(t *testing.T) {
	cases := []struct {
		name   string
		chunks []string
		bad    bool
	}{
		{"clean end of data", []string{"body\r\n.\r\n"}, false},
		{"hidden bare CR", []string{"body\r\n.\rMAIL FROM:<x>\r\n"}, true},
		{"split after dot", []string{"body\r\n.", "\rX"}, true},
		{"split after CR", []string{"body\r\n.\r", "X"}, true},
		{"split after CR, then LF", []string{"body\r\n.\r", "\n"}, false},
		{"one byte at a time", []string{"a", "\n", ".", "\r", "Z"}, true},
		{"one byte at a time, clean", []string{"a", "\r", "\n", ".", "\r", "\n"}, false},
		{"dot-stuffed line", []string{"\r\n..\r\n"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := &trackedConn{}
			for _, ch := range tc.chunks {
				c.scanDotCR([]byte(ch))
			}
			if got := c.dotCR.Load(); got != tc.bad {
				t.Fatalf("dotCR = %v, want %v", got, tc.bad)
			}
		})
	}
}
