/* sdnotify: the two small systemd protocols, without libsystemd: readiness notification
 * (NOTIFY_SOCKET, sd_notify(3)) and socket activation (LISTEN_PID/LISTEN_FDS, sd_listen_fds(3)).
 * Never logs, never exits, never touches a ring: every failure is a negative errno for the caller
 * to report. Both are no-ops when uproxy was not started by systemd. */
#ifndef UPROXY_SDNOTIFY_H
#define UPROXY_SDNOTIFY_H

#include <stddef.h>
#include <sys/socket.h>
#include <sys/un.h>

/* The first descriptor systemd passes (SD_LISTEN_FDS_START): stdin, stdout, stderr come before. */
#define SDNOTIFY_LISTEN_FDS_START 3

/* The longest message sdnotify_sendf formats; a few "KEY=value" lines fit easily. */
#define SDNOTIFY_MSG_MAX 512

/*
 * How long one send may wait when the manager's receive queue is full, in milliseconds. PID 1
 * drains its notify socket promptly; this only bounds the damage if it does not, so that a stuck
 * manager cannot hang shutdown. A message that times out fails with -EAGAIN.
 */
#define SDNOTIFY_SEND_TIMEOUT_MS 1000

struct sdnotify {
	int fd;			 /* -1: notification disabled (NOTIFY_SOCKET unset) */
	struct sockaddr_un addr; /* the manager's socket: a path, or abstract (sun_path[0] = 0) */
	socklen_t addrlen;
};

/*
 * Reads NOTIFY_SOCKET ("/path" or "@abstract") and opens an AF_UNIX datagram socket to send to
 * it. Without NOTIFY_SOCKET (or with it empty) the notifier is disabled: returns 0 with
 * n->fd = -1, and every send is a no-op returning 0. Returns -EINVAL for a value that is neither
 * an absolute path nor '@name', -ENAMETOOLONG when it does not fit sun_path, or -errno from
 * socket(2). n->fd is -1 after any failure, so sdnotify_close is always safe after this call.
 * The environment is left as it is.
 */
int sdnotify_open(struct sdnotify *n);

/*
 * Sends msg (newline-separated "KEY=value" assignments, e.g. "READY=1") as one datagram. Returns
 * 0, or -errno from sendto(2) (-ENOENT/-ECONNREFUSED: the manager's socket is gone, -EAGAIN: it
 * did not drain within SDNOTIFY_SEND_TIMEOUT_MS). Safe from any thread once sdnotify_open has
 * returned: it only reads *n.
 */
int sdnotify_send(const struct sdnotify *n, const char *msg);

/* printf-style sdnotify_send; -EMSGSIZE when the text exceeds SDNOTIFY_MSG_MAX - 1 bytes. */
int sdnotify_sendf(const struct sdnotify *n, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));

/* "READY=1": start-up is done, the listeners accept. */
int sdnotify_ready(const struct sdnotify *n);

/* "STOPPING=1": draining has begun (SIGTERM/SIGINT). */
int sdnotify_stopping(const struct sdnotify *n);

/* "STATUS=<n> active sessions": the one-line status systemctl status shows. */
int sdnotify_status_sessions(const struct sdnotify *n, unsigned int active);

/* Closes the socket if open; n->fd becomes -1. Idempotent. */
void sdnotify_close(struct sdnotify *n);

/*
 * Socket activation. When LISTEN_PID is this process's pid and LISTEN_FDS = N > 0, checks that
 * descriptors 3 .. 3+N-1 are listening TCP sockets (SOCK_STREAM, AF_INET or AF_INET6, accepting),
 * marks them close-on-exec and stores them in fds[0..N-1]; returns N. Returns 0 when the process
 * was not socket-activated (LISTEN_PID unset, or another process's, or LISTEN_FDS = 0). On error
 * returns -EINVAL (malformed LISTEN_PID/LISTEN_FDS, or a descriptor that is not a listening TCP
 * socket), -EBADF (a descriptor that is not open) or -E2BIG (more than max descriptors), with why
 * (whylen bytes, at least 128 advised) naming the variable or descriptor at fault; no descriptor
 * is closed. In every case LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES are removed from the
 * environment, as sd_listen_fds(1) does, so no child inherits them. Calls unsetenv(3): call it
 * before any thread is started.
 */
int sdnotify_listen_fds(int *fds, int max, char *why, size_t whylen);

#endif
