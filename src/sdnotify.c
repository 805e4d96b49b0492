/* sdnotify: speaks sd_notify(3) and sd_listen_fds(3) directly, so uproxy needs no libsystemd.
 * Owns the notify socket and the validation of inherited listeners; never logs, never exits,
 * and never closes a descriptor it did not open. */
#include "uproxy/sdnotify.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

/* Fills n->addr from a NOTIFY_SOCKET value: "/path" or "@abstract" ('@' stands for the NUL). */
static int sdnotify_parse_addr(struct sdnotify *n, const char *e)
{
	size_t len = strlen(e);

	if ((e[0] != '/' && e[0] != '@') || len < 2)
		return -EINVAL;
	/* A path needs its terminating NUL inside sun_path; an abstract name does not. */
	if (len > sizeof(n->addr.sun_path) || (e[0] == '/' && len == sizeof(n->addr.sun_path)))
		return -ENAMETOOLONG;
	memset(&n->addr, 0, sizeof(n->addr));
	n->addr.sun_family = AF_UNIX;
	memcpy(n->addr.sun_path, e, len);
	if (e[0] == '@') {
		n->addr.sun_path[0] = '\0';
		n->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
	} else {
		n->addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
	}
	return 0;
}

int sdnotify_open(struct sdnotify *n)
{
	const char *e = getenv("NOTIFY_SOCKET");
	struct timeval tv = { .tv_sec = SDNOTIFY_SEND_TIMEOUT_MS / 1000,
			      .tv_usec = (SDNOTIFY_SEND_TIMEOUT_MS % 1000) * 1000 };
	int fd, r;

	memset(n, 0, sizeof(*n));
	n->fd = -1;
	if (e == NULL || *e == '\0')
		return 0;
	r = sdnotify_parse_addr(n, e);
	if (r < 0)
		return r;
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	/* Best effort: without the timeout a send can only block longer, never fail wrongly. */
	(void)setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
	n->fd = fd;
	return 0;
}

int sdnotify_send(const struct sdnotify *n, const char *msg)
{
	ssize_t r;

	if (n->fd < 0)
		return 0;
	do {
		r = sendto(n->fd, msg, strlen(msg), MSG_NOSIGNAL, (const struct sockaddr *)&n->addr,
			   n->addrlen);
	} while (r < 0 && errno == EINTR);
	return r < 0 ? -errno : 0;
}

int sdnotify_sendf(const struct sdnotify *n, const char *fmt, ...)
{
	char msg[SDNOTIFY_MSG_MAX];
	va_list ap;
	int len;

	if (n->fd < 0)
		return 0;
	va_start(ap, fmt);
	len = vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (len < 0)
		return -EINVAL;
	if ((size_t)len >= sizeof(msg))
		return -EMSGSIZE;
	return sdnotify_send(n, msg);
}

int sdnotify_ready(const struct sdnotify *n)
{
	return sdnotify_send(n, "READY=1");
}

int sdnotify_stopping(const struct sdnotify *n)
{
	return sdnotify_send(n, "STOPPING=1");
}

int sdnotify_status_sessions(const struct sdnotify *n, unsigned int active)
{
	return sdnotify_sendf(n, "STATUS=%u active sessions", active);
}

void sdnotify_close(struct sdnotify *n)
{
	if (n->fd >= 0)
		close(n->fd);
	n->fd = -1;
}

/* Parses a whole decimal number in [min, max]: no sign, no blanks, no suffix. */
static int sdnotify_parse_num(const char *s, long min, long max, long *out)
{
	long v = 0;

	if (*s == '\0')
		return -EINVAL;
	for (const char *c = s; *c; c++) {
		if (*c < '0' || *c > '9')
			return -EINVAL;
		if (v > (max - (*c - '0')) / 10)
			return -EINVAL;
		v = v * 10 + (*c - '0');
	}
	if (v < min)
		return -EINVAL;
	*out = v;
	return 0;
}

/* Checks that fd is an open, listening TCP socket and marks it close-on-exec. */
static int sdnotify_check_listener(int fd, char *why, size_t whylen)
{
	int flags, type = 0, domain = 0, acc = 0;
	socklen_t len;

	flags = fcntl(fd, F_GETFD);
	if (flags < 0) {
		snprintf(why, whylen, "LISTEN_FDS: fd %d is not open", fd);
		return -EBADF;
	}
	len = sizeof(type);
	if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0) {
		int err = errno;

		snprintf(why, whylen, "LISTEN_FDS: fd %d is not a socket (%s)", fd, strerror(err));
		return -EINVAL;
	}
	if (type != SOCK_STREAM) {
		snprintf(why, whylen, "LISTEN_FDS: fd %d is not a stream socket (SO_TYPE %d)", fd,
			 type);
		return -EINVAL;
	}
	len = sizeof(domain);
	if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) < 0 ||
	    (domain != AF_INET && domain != AF_INET6)) {
		snprintf(why, whylen,
			 "LISTEN_FDS: fd %d is not a TCP socket (family %d, expected IPv4 or IPv6)",
			 fd, domain);
		return -EINVAL;
	}
	len = sizeof(acc);
	if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &acc, &len) < 0 || acc == 0) {
		snprintf(why, whylen, "LISTEN_FDS: fd %d is a socket that is not listening", fd);
		return -EINVAL;
	}
	if (!(flags & FD_CLOEXEC) && fcntl(fd, F_SETFD, flags | FD_CLOEXEC) < 0) {
		int err = errno;

		snprintf(why, whylen, "LISTEN_FDS: fd %d: cannot set FD_CLOEXEC: %s", fd,
			 strerror(err));
		return -err;
	}
	return 0;
}

/* Everything but the environment cleanup, which sdnotify_listen_fds does on every path. */
static int sdnotify_collect(int *fds, int max, char *why, size_t whylen)
{
	const char *epid = getenv("LISTEN_PID"), *efds = getenv("LISTEN_FDS");
	long pid, n;
	int r;

	if (epid == NULL || efds == NULL)
		return 0;
	if (sdnotify_parse_num(epid, 1, INT_MAX, &pid) < 0) {
		snprintf(why, whylen, "LISTEN_PID '%.32s' is not a process id", epid);
		return -EINVAL;
	}
	if (pid != (long)getpid())
		return 0; /* meant for the process that exec'd us, not for us */
	if (sdnotify_parse_num(efds, 0, INT_MAX - SDNOTIFY_LISTEN_FDS_START, &n) < 0) {
		snprintf(why, whylen, "LISTEN_FDS '%.32s' is not a number of descriptors", efds);
		return -EINVAL;
	}
	if (n > max) {
		snprintf(why, whylen,
			 "LISTEN_FDS=%ld: more than the %d listening sockets supported", n, max);
		return -E2BIG;
	}
	for (int i = 0; i < (int)n; i++) {
		r = sdnotify_check_listener(SDNOTIFY_LISTEN_FDS_START + i, why, whylen);
		if (r < 0)
			return r;
		fds[i] = SDNOTIFY_LISTEN_FDS_START + i;
	}
	return (int)n;
}

int sdnotify_listen_fds(int *fds, int max, char *why, size_t whylen)
{
	int r;

	if (whylen > 0)
		why[0] = '\0';
	r = sdnotify_collect(fds, max, why, whylen);
	unsetenv("LISTEN_PID");
	unsetenv("LISTEN_FDS");
	unsetenv("LISTEN_FDNAMES");
	return r;
}
