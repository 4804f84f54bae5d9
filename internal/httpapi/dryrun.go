package httpapi

// ClientStatus is the HTTP status and error code an API client sees when
// the pipeline refuses its request with err: access is true for a refusal
// at on_connect or on_auth (403/401), false for the message itself (see
// fromPipeline). `sluice test --source http` prints it.
func ClientStatus(err error, access bool) (status int, code string) {
	e := fromPipeline(err)
	if access {
		e = fromAccess(err)
	}
	return e.Status, e.Code
}
