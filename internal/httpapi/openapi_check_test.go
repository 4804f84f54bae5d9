package httpapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
)

// The OpenAPI document, loaded and validated once for every test.
var (
	specOnce   sync.Once
	specRouter routers.Router
	specErr    error
)

func openAPIRouter() (routers.Router, error) {
	specOnce.Do(func() {
		loader := openapi3.NewLoader()
		doc, err := loader.LoadFromData(openAPI)
		if err != nil {
			specErr = err
			return
		}
		if err := doc.Validate(context.Background()); err != nil {
			specErr = err
			return
		}
		// The document's server is relative ("/", wherever it is served
		// from): match requests by path only.
		doc.Servers = nil
		specRouter, specErr = gorillamux.NewRouter(doc)
	})
	return specRouter, specErr
}

// checkedHandler wraps the API's handler for tests: every response to a
// request for a path the OpenAPI document describes is validated against
// the document (status code documented, headers, body schema); a
// response that disagrees fails t. Requests for undocumented paths (tests
// of unknown routes) are passed through unchecked.
func checkedHandler(t testing.TB, h http.Handler) http.Handler {
	router, err := openAPIRouter()
	if err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		route, params, ferr := router.FindRoute(r)
		if ferr != nil {
			h.ServeHTTP(w, r)
			return
		}
		cw := &captureWriter{statusWriter: statusWriter{ResponseWriter: w, status: http.StatusOK}}
		h.ServeHTTP(cw, r)
		in := &openapi3filter.ResponseValidationInput{
			RequestValidationInput: &openapi3filter.RequestValidationInput{Request: r, PathParams: params, Route: route,
				Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}},
			Status:  cw.status,
			Header:  cw.Header(),
			Body:    io.NopCloser(bytes.NewReader(cw.body.Bytes())),
			Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true},
		}
		if err := openapi3filter.ValidateResponse(r.Context(), in); err != nil {
			t.Errorf("%s %s: response %d does not match openapi.json: %v\nbody: %.300s", r.Method, r.URL.Path, cw.status, err, cw.body.Bytes())
		}
	})
}

// captureWriter passes a response through (statusWriter, accesslog.go)
// and keeps a copy of its body.
type captureWriter struct {
	statusWriter
	body bytes.Buffer
}

func (c *captureWriter) Write(p []byte) (int, error) {
	c.body.Write(p)
	return c.statusWriter.Write(p)
}

// TestOpenAPIDocument: the document is valid OpenAPI 3, names no fixed
// server address, and its error code enum is exactly the codes the
// server's source defines (code* constants).
func TestOpenAPIDocument(t *testing.T) {
	if _, err := openAPIRouter(); err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Servers    []struct{ URL string } `json:"servers"`
		Components struct {
			Schemas struct {
				Error struct {
					Properties struct {
						Code struct {
							Enum []string `json:"enum"`
						} `json:"code"`
					} `json:"properties"`
				} `json:"Error"`
			} `json:"schemas"`
		} `json:"components"`
	}
	if err := json.Unmarshal(openAPI, &doc); err != nil {
		t.Fatal(err)
	}
	for _, s := range doc.Servers {
		if strings.Contains(s.URL, "://") {
			t.Errorf("openapi.json names a fixed server %q; use a relative URL", s.URL)
		}
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`(?m)^\s*code[A-Z][A-Za-z]*\s*=\s*"([a-z_]+)"`)
	inSource := map[string]bool{}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		src, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range re.FindAllStringSubmatch(string(src), -1) {
			inSource[m[1]] = true
		}
	}
	inDoc := map[string]bool{}
	for _, c := range doc.Components.Schemas.Error.Properties.Code.Enum {
		inDoc[c] = true
		if !inSource[c] {
			t.Errorf("openapi.json lists error code %q, which the server does not define", c)
		}
	}
	for c := range inSource {
		if !inDoc[c] {
			t.Errorf("the server answers error code %q, which openapi.json does not list", c)
		}
	}
	if len(inSource) < 20 {
		t.Errorf("found only %d error codes in the source", len(inSource))
	}
}
