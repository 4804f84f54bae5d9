package config

import "testing"

// TestPluginCmdBesideBareConfigName: cmd = "./x" in a configuration named
// without a directory stays a path ("./x"), not a name looked up in $PATH.
func TestPluginCmdBesideBareConfigName(t *testing.T) {
	cfg, err := Parse("pipeline.lua", []byte(`local sluice = require("sluice")
sluice.listen_smtp { addr = "127.0.0.1:0" }
sluice.stage("p", sluice.plugin { cmd = "./stamp" })
sluice.stage("q", sluice.plugin { cmd = "bin/stamp" })
`))
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Stages[0].Plugin.Cmd; got != "./stamp" {
		t.Errorf("cmd ./stamp became %q", got)
	}
	if got := cfg.Stages[1].Plugin.Cmd; got != "bin/stamp" {
		t.Errorf("cmd bin/stamp became %q", got)
	}
}
