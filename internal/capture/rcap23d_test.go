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

// TestSearchTextPoolKeepsNoLargeWordList: a text of many distinct words
// (40,000: 160 KiB of positions, 320 KiB of word bounds) leaves no
// buffer above maxPooledText in the pool, the word bounds included.
func TestSearchTextPoolKeepsNoLargeWordList(t *testing.T) {
	var b strings.Builder
	for i := range 40000 {
		fmt.Fprintf(&b, "w%d ", i)
	}
	newSearchText("s", []byte(b.String())).release()
	for range 4 {
		st := searchTexts.Get().(*searchText)
		defer searchTexts.Put(st)
		for _, c := range []int{cap(st.text), 4 * cap(st.spans), 4 * cap(st.pos), 4 * cap(st.at), 4 * cap(st.occ)} {
			if c > maxPooledText {
				t.Fatalf("a pooled searchText holds a %d-byte buffer (text %d, spans %d, pos %d, at %d, occ %d)",
					c, cap(st.text), cap(st.spans), cap(st.pos), cap(st.at), cap(st.occ))
			}
		}
	}
}
