package server

import _ "github.com/sluice-mta/sluice/internal/stages/spf" // spf
