/* listener: the listening sockets a worker accepts on: opening them (SO_REUSEPORT, one per
 * worker on the same port; dual-stack for ":PORT"), or adopting the ones systemd passed. Pure
 * socket set-up: never touches a ring; accepting is the worker's (accept.c). */
#ifndef UPROXY_LISTENER_H
#define UPROXY_LISTENER_H

#include <stdbool.h>
#include <stddef.h>

#include "uproxy/addr.h"

/* listen(2) backlog of each listener. */
#define LISTENER_BACKLOG 1024u

struct listener {
	int fd;
	bool multi_armed;  /* multishot accept in flight */
	bool single_armed; /* single-shot accept in flight (near --max-conns) */
	bool cancel_multi; /* cancels in flight */
	bool cancel_single;
	struct addr addr;
};

/* Opens listening sockets for hp (every address it names). Returns the count or -1 with why. */
int listener_open(const struct hostport *hp, struct listener *out, int max, char *why,
		  size_t whylen);

/* Socket activation: takes the n inherited listening sockets (worker 0 the originals, the
 * others dup()s of them, all sharing one accept queue). Returns n or -1 with why. */
int listener_adopt(const int *fds, int n, bool original, struct listener *out, char *why,
		   size_t whylen);

int listener_open_mode(const struct hostport *hp, unsigned int mode, struct listener *out, int max,
		       char *why, size_t whylen);
void listener_unlink(const struct hostport *hp);
#endif
