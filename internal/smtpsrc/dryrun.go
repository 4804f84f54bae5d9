package smtpsrc

import "github.com/sluice-mta/sluice/pipeline"

// ClientReply is the reply an SMTP client sees for err (the one boundary
// smtpError, see reply.go), or for a nil err the 250 answer to DATA that
// names the message id. `sluice test` prints it.
func ClientReply(err error, msgID string) (code int, enhanced pipeline.EnhancedCode, text string) {
	r := okReply(msgID)
	if err != nil {
		r = smtpError(err)
	}
	return r.Code, pipeline.EnhancedCode(r.EnhancedCode), r.Message
}
