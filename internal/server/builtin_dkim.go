package server

import _ "github.com/sluice-mta/sluice/internal/stages/dkim" // dkim_sign, dkim_verify
