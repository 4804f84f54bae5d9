package capture

import "testing"

// TestHTMLOnlyTextDecodesEntities: the searchable text of a message with
// only an HTML part is its text as a reader sees it, character
// references decoded (&amp; &eacute; &#8217; &nbsp; as a space), so
// text searches find "order 42" in "order&nbsp;42" and "café" in
// "caf&eacute;".
func TestHTMLOnlyTextDecodesEntities(t *testing.T) {
	s := open(t, t.TempDir(), Options{})
	defer s.Close()
	data := []byte("From: app@sender.test\r\nTo: bob@dest.test\r\nSubject: html only\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" +
		"<p>Your order&nbsp;42 from Tom &amp; Jerry&#8217;s caf&eacute; &lt;shipped&gt;</p>\r\n")
	if _, err := s.Put("acme", "", "app@sender.test", []string{"bob@dest.test"}, data); err != nil {
		t.Fatal(err)
	}
	for _, q := range []string{`"order 42"`, `café`, `"tom & jerry’s"`, `"<shipped>"`} {
		p, err := s.Search("acme", Filter{Text: q}, 0, 10)
		if err != nil {
			t.Fatal(err)
		}
		if p.Count != 1 {
			t.Errorf("text=%s finds %d messages, want 1", q, p.Count)
		}
	}
	for _, q := range []string{"nbsp", "amp", "eacute", "8217"} {
		if p, _ := s.Search("acme", Filter{Text: q}, 0, 10); p.Count != 0 {
			t.Errorf("text=%s finds the HTML-only message (a character reference's name is not its text)", q)
		}
	}
}
