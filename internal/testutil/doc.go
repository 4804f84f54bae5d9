// Package testutil holds the helpers that tests across Sluice share, so
// that each is written once: polling with a deadline instead of sleeping
// (WaitFor), a self-signed TLS certificate on disk and in memory
// (SelfSignedCert), an in-process SMTP server that records what it
// receives and can be told how to answer (StartSink), and writing a tree of
// files such as a configuration into a temporary directory (WriteFiles,
// TempFiles), validating events against the published JSON Schema
// docs/event.schema.json (ValidateEvent, ValidateEvents, CheckEvent), and
// verifying a Standard Webhooks signature independently of the signing
// library (VerifyWebhook).
//
// It is for tests only: it is an ordinary package so that _test.go files in
// any package can import it, but product code must not. Every helper takes
// a testing.TB, fails the test itself on a setup error and registers its
// clean-up with t.Cleanup, so callers need no error handling or defers.
//
// It imports nothing from Sluice but the docs package (the embedded
// schema, which imports nothing), so that every internal package,
// including internal/config, can use it from its own tests without an
// import cycle.
// It is not the benchmark sink: that one is product code in internal/loadgen.
package testutil
