package capture

import (
	"fmt"
	"strings"
	"testing"
)

// TestWordHashSpreadsWordsAlikeAtTheEnds: words of one length that share
// their first and last eight bytes (numbered words, say
// "customer0001234account") land in different slots of split's small
// set. A hash of the ends only put them all in one slot, so each
// occurrence probed the whole cluster of up to 384 words (a 4 MiB text
// of such words took six times as long to split as before issue 23).
func TestWordHashSpreadsWordsAlikeAtTheEnds(t *testing.T) {
	const n = 384 // the words the small set holds
	for _, format := range []string{"customer%07daccount1", "abcdefghijklmnopqrstuvwxyz%07dabcdefghijklmnopqrstuvwxyz0123456", "%07d" + strings.Repeat("z", 57)} {
		slots := map[uint32]bool{}
		hashes := map[uint32]bool{}
		for i := range n {
			h := wordHash(fmt.Appendf(nil, format, i))
			slots[h%512], hashes[h] = true, true
		}
		// A uniform hash fills about 270 distinct slots of 512 with 384 words.
		if len(slots) < n/3 || len(hashes) < n-2 {
			t.Fatalf("%d words %q: %d distinct hashes, %d distinct slots of 512", n, format, len(hashes), len(slots))
		}
	}
}
