package server

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sluice-mta/sluice/internal/config"
)

// ControlSocket is the path of the node's control socket: the spool path
// with ".sock" appended ("./var/spool.sock" by default). `sluice reload`
// talks to it. It is a Unix socket with mode 0600: whoever can use it can
// reload the node.
func ControlSocket(cfg *config.Config) string {
	return strings.TrimRight(cfg.Spool.Path, "/") + ".sock"
}

// controlServer answers one-line commands on the control socket:
//
//	reload   ->  "ok <summary>" or "error <message>"
//
// Each answer is one line. The protocol is for `sluice` itself, not a
// public API.
type controlServer struct {
	ln   net.Listener
	s    *Server
	log  *slog.Logger
	wg   sync.WaitGroup
	path string
}

func listenControl(path string, s *Server) (*controlServer, error) {
	// A socket left by a crash is in the way; a live node answers on it.
	if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
		c.Close()
		return nil, fmt.Errorf("control socket %s: another sluice is running on this spool", path)
	}
	_ = os.Remove(path)
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("control socket: %w", err)
	}
	cs := &controlServer{ln: ln, s: s, log: s.log.With("component", "control"), path: path}
	cs.wg.Add(1)
	go cs.loop()
	return cs, nil
}

func (cs *controlServer) loop() {
	defer cs.wg.Done()
	for {
		c, err := cs.ln.Accept()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				cs.log.Warn("control socket accept failed", "err", err)
			}
			return
		}
		cs.wg.Add(1)
		go func() {
			defer cs.wg.Done()
			cs.handle(c)
		}()
	}
}

func (cs *controlServer) handle(c net.Conn) {
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	line, err := bufio.NewReader(io.LimitReader(c, 1024)).ReadString('\n')
	if err != nil {
		return
	}
	switch cmd := strings.TrimSpace(line); cmd {
	case "reload":
		cs.log.Info("reload requested on the control socket")
		summary, err := cs.s.Reload()
		if err != nil {
			fmt.Fprintf(c, "error %s\n", oneLine(err.Error()))
			return
		}
		fmt.Fprintf(c, "ok %s\n", oneLine(summary))
	default:
		fmt.Fprintf(c, "error unknown command %q\n", cmd)
	}
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", "; ") }

// Close stops the control socket and removes its file.
func (cs *controlServer) Close() error {
	err := cs.ln.Close()
	cs.wg.Wait()
	_ = os.Remove(cs.path)
	return err
}

// RequestReload asks the node listening on the control socket path to
// reload. It returns the node's summary, or its error (the node's reason
// when the new configuration does not validate).
func RequestReload(path string) (string, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		return "", fmt.Errorf("cannot reach a running sluice on %s (is `sluice serve` running with this spool?): %w", path, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(2 * time.Minute))
	if _, err := io.WriteString(c, "reload\n"); err != nil {
		return "", err
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("no answer from %s: %w", path, err)
	}
	line = strings.TrimSpace(line)
	if rest, ok := strings.CutPrefix(line, "ok "); ok {
		return rest, nil
	}
	return "", errors.New(strings.TrimPrefix(line, "error "))
}
