package luahost

import (
	lua "github.com/yuin/gopher-lua"

	"github.com/sluice-mta/sluice/pipeline"
)

// msg:track { opens = true, clicks = true, unsubscribe = true } (also
// txn:track at on_mail and on_rcpt): asks for engagement tracking of
// this message (docs/tracking.md). Each key is optional; a key given as
// false opts the message out whatever the tenant's default and the HTTP
// request said, true opts it in, an absent key changes nothing. The last
// call wins per key. It records a pipeline.Edits.Track, allowed where
// header edits are (not at on_route). Without sluice.tracking it does
// nothing.
func (st *state) track(L *lua.LState) int {
	st.self(L, "track")
	name := "msg:track" // errors name the call as the script wrote it
	if ud, ok := L.Get(1).(*lua.LUserData); ok && ud.Metatable == st.txnMT {
		name = "txn:track"
	}
	st.mayEdit(name, pipeline.EditTrack)
	o := st.sb.CheckOpts(2, name, "opens", "clicks", "unsubscribe")
	var t pipeline.Track
	for key, dst := range map[string]**bool{"opens": &t.Opens, "clicks": &t.Clicks, "unsubscribe": &t.Unsubscribe} {
		var b bool
		if o.Bool(key, &b) {
			*dst = &b
		}
	}
	st.edits.Track = st.edits.Track.Merge(&t)
	return 0
}
