// Command pause holds a pod's namespaces open: the sandbox image kubeadm expects. It waits for SIGINT/SIGTERM
// and reaps nothing else, like the upstream pause; being static Go it needs no libc in a FROM-scratch image.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	<-signals
}
