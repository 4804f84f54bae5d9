package main

import "io"

func runTestScripts(args []string, stdout, stderr io.Writer) int { return 2 }
