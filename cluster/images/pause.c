/*
 * The pod sandbox's first process (the image registry.k8s.io/pause:3.10.1 stands for, built
 * here from this file by scripts/cluster). It holds the pod's namespaces open, reaps any child
 * that is re-parented to it, and exits cleanly when the runtime stops the sandbox.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) {
	(void)sig;
	_exit(0);
}

static void reap(int sig) {
	(void)sig;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
}

static int on(int sig, void (*handler)(int)) {
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = handler;
	sa.sa_flags = SA_RESTART | (sig == SIGCHLD ? SA_NOCLDSTOP : 0);
	return sigaction(sig, &sa, NULL);
}

int main(int argc, char **argv) {
	if (argc > 1 && (strcmp(argv[1], "-v") == 0 || strcmp(argv[1], "--version") == 0)) {
		puts("pause (sluice cluster build)");
		return 0;
	}
	if (getpid() != 1)
		fputs("pause: not PID 1: orphans in this namespace are not reaped here\n", stderr);
	if (on(SIGINT, stop) || on(SIGTERM, stop) || on(SIGCHLD, reap)) {
		perror("pause: sigaction");
		return 1;
	}
	for (;;)
		pause();
}
