/*
 * pause: the process that holds a pod sandbox's namespaces open.
 *
 * Built by hack/images.py with `gcc -static` into rt-dra.local/node-base:1, the
 * image containerd pins as its sandbox image. It sleeps until SIGTERM or SIGINT
 * (exit 0) and, when it runs as PID 1 of a shared PID namespace, reaps the
 * children orphaned to it (SIGCHLD -> waitpid loop). No libc beyond POSIX.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static void on_stop(int sig) {
	(void)sig;
	_exit(0);
}

static void on_child(int sig) {
	(void)sig;
	int saved = errno;
	while (waitpid(-1, NULL, WNOHANG) > 0) {
	}
	errno = saved;
}

int main(int argc, char **argv) {
	if (argc > 1 && strcmp(argv[1], "-v") == 0) {
		puts("rt-dra pause 1");
		return 0;
	}
	struct sigaction stop = {.sa_handler = on_stop};
	struct sigaction child = {.sa_handler = on_child, .sa_flags = SA_NOCLDSTOP | SA_RESTART};
	sigemptyset(&stop.sa_mask);
	sigemptyset(&child.sa_mask);
	if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
	    sigaction(SIGCHLD, &child, NULL) < 0) {
		perror("pause: sigaction");
		return 1;
	}
	if (getpid() != 1)
		fputs("pause: not running as PID 1\n", stderr);
	for (;;)
		pause();
	return 1; /* not reached */
}
