/* listener: the listening sockets a worker accepts on: opening them (SO_REUSEPORT, one per
 * worker on the same port; dual-stack for ":PORT"; one unix socket shared by dup()s), or adopting
 * the ones systemd passed. Pure socket set-up: never touches a ring; accepting is the worker's
 * (accept.c). */
#ifndef UPROXY_LISTENER_H
#define UPROXY_LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>
#include <time.h>

#include "uproxy/addr.h"

/* listen(2) backlog of each listener. */
#define LISTENER_BACKLOG 1024u

/*
 * Which file a path names, to tell our socket file from one that replaced it. dev and ino alone
 * do not do: a file system reuses a freed inode number at once (ext4 and tmpfs both do), so a
 * file made right after ours was removed can have our numbers. The file handle
 * (name_to_handle_at) carries the inode's generation, which changes on reuse; where the file
 * system gives none, the change time (ns) stands in for it.
 */
#define LISTENER_FILE_HANDLE_MAX 64
struct listener_file_id {
	dev_t dev;
	ino_t ino;
	struct timespec ctime;
	int handle_type;
	unsigned int handle_len; /* 0: no handle, compare ctime */
	unsigned char handle[LISTENER_FILE_HANDLE_MAX];
};

struct listener {
	int fd;
	bool multi_armed;  /* multishot accept in flight */
	bool single_armed; /* single-shot accept in flight (near --max-conns) */
	bool cancel_multi; /* cancels in flight */
	bool cancel_single;
	bool unix_file; /* a unix socket file listener_open_unix created (not abstract, adopted) */
	struct listener_file_id unix_id; /* that file, as created: see listener_unlink */
	struct addr addr;
};

/* Opens listening sockets for hp (every address it names). Returns the count or -1 with why.
 * A unix hostport is listener_open_unix(hp, 0, out, ...): call it once, not once per worker. */
int listener_open(const struct hostport *hp, struct listener *out, int max, char *why,
		  size_t whylen);

/*
 * Opens the one listening socket of a unix hostport ("unix:/path" or "unix:@name"). There is no
 * SO_REUSEPORT for AF_UNIX (a second bind to the path fails), so the workers share one accept
 * queue: open it once (main, before the workers) and give every worker a listener_dup of it, as
 * with socket activation. For a path:
 *   - nothing there: bind;
 *   - a socket file nobody listens on (connect: ECONNREFUSED, e.g. left by a killed process):
 *     removed (logged at info), then bind;
 *   - a socket a live process answers on: -1, "unix:/path is in use by another process";
 *   - anything else (a regular file, a directory, ...): -1, the file is not touched.
 * mode (e.g. 0660; 0: leave what the umask gives) is applied race-free: the socket is fchmod()ed
 * before bind, which Linux applies (with the umask) to the file it creates, so the file is never
 * more open than mode; a chmod() after bind then sets exactly mode, before listen(). An
 * abstract name has no file: no stale check, no mode, nothing to remove. Returns 1 (one
 * listener in out[0]) or -1 with why naming the address.
 */
int listener_open_unix(const struct hostport *hp, unsigned int mode, struct listener *out,
		       char *why, size_t whylen);

/* Another worker's copy of orig: a dup (close-on-exec) of its socket, so both accept from one
 * queue, with orig's address and unix-file identity and nothing armed. Returns 0 or -1 with
 * why. */
int listener_dup(const struct listener *orig, struct listener *out, char *why, size_t whylen);

/*
 * Removal on exit (or when SIGHUP removes the listener): unlinks the socket file l was bound to,
 * only if the path still names that very file (its listener_file_id as recorded right after
 * bind and chmod: a newer process may have replaced it, e.g. a restart that found ours stale
 * while we drained, and then it is not ours). Safe to call from any copy (a listener_dup), more
 * than once, and after l->fd is closed. Returns 1 when it removed the file, 0 when there was
 * nothing of ours to remove (not a unix file, gone, replaced), or -errno when unlink failed
 * (logged as a warning).
 */
int listener_unlink(const struct listener *l);

/* Socket activation: takes the n inherited listening sockets (worker 0 the originals, the
 * others dup()s of them, all sharing one accept queue). Returns n or -1 with why. Adopted unix
 * sockets get no TCP options and are never unlinked (systemd owns their files). */
int listener_adopt(const int *fds, int n, bool original, struct listener *out, char *why,
		   size_t whylen);

#endif
