/* listener: opens the listening sockets (or adopts systemd's) with the options every accepted
 * socket inherits. Reports every failure with its cause; never touches a ring. */
#include "uproxy/listener.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "uproxy/log.h"
#include "uproxy/util.h"

/* Opens, binds and listens on one IP address, with the options accepted sockets inherit. */
static int listen_one(const struct addr *a, bool dual_stack, struct listener *l, char *why,
		      size_t whylen)
{
	static const int one = 1;
	char buf[ADDR_STRLEN];
	int fd, zero = 0;

	fd = socket(a->u.sa.sa_family, SOCK_STREAM | SOCK_CLOEXEC, IPPROTO_TCP);
	if (fd < 0) {
		snprintf(why, whylen, "cannot create a socket for %s: %s",
			 addr_format(a, buf, sizeof(buf)), strerror(errno));
		return -errno;
	}
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* One listener per worker on the same port; the kernel spreads connections by hash. */
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0) {
		snprintf(why, whylen, "cannot set SO_REUSEPORT: %s", strerror(errno));
		close(fd);
		return -errno;
	}
	/* Accepted sockets inherit these from the listener: no per-connection syscall. */
	sock_set_forwarding(fd);
	if (a->u.sa.sa_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, dual_stack ? &zero : &one,
				 sizeof(int));
	if (bind(fd, &a->u.sa, a->len) < 0 || listen(fd, (int)LISTENER_BACKLOG) < 0) {
		int err = errno;

		snprintf(why, whylen, "cannot listen on %s: %s%s", addr_format(a, buf, sizeof(buf)),
			 strerror(err),
			 err == EADDRINUSE ? " (another process is using that port)"
			 : err == EACCES   ? " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
			 : err == EADDRNOTAVAIL ? " (no local interface has that address)"
						: "");
		close(fd);
		return -err;
	}
	l->fd = fd;
	l->addr = *a;
	l->multi_armed = l->single_armed = false;
	l->cancel_multi = l->cancel_single = false;
	return 0;
}

int listener_open(const struct hostport *hp, struct listener *out, int max, char *why,
		  size_t whylen)
{
	struct addr addrs[ADDR_MAX_RESOLVED];
	int n, count = 0;

	if (hp->unix_sock) {
		if (max < 1) {
			snprintf(why, whylen, "no room for a listener");
			return -1;
		}
		return listener_open_unix(hp, 0, out, why, whylen);
	}

	if (hp->any) {
		struct addr a;

		/* One dual-stack [::] socket takes IPv4 too; fall back to 0.0.0.0 on hosts
		 * without IPv6. */
		memset(&a, 0, sizeof(a));
		a.u.in6.sin6_family = AF_INET6;
		a.u.in6.sin6_addr = in6addr_any;
		a.u.in6.sin6_port = htons(hp->port);
		a.len = sizeof(a.u.in6);
		if (listen_one(&a, true, &out[0], why, whylen) == 0)
			return 1;
		memset(&a, 0, sizeof(a));
		a.u.in4.sin_family = AF_INET;
		a.u.in4.sin_addr.s_addr = htonl(INADDR_ANY);
		a.u.in4.sin_port = htons(hp->port);
		a.len = sizeof(a.u.in4);
		return listen_one(&a, false, &out[0], why, whylen) == 0 ? 1 : -1;
	}
	n = addr_resolve(hp, addrs, max < ADDR_MAX_RESOLVED ? max : ADDR_MAX_RESOLVED, why, whylen);
	if (n < 0)
		return -1;
	for (int i = 0; i < n; i++) {
		if (listen_one(&addrs[i], false, &out[count], why, whylen) < 0) {
			while (count > 0)
				close(out[--count].fd);
			return -1;
		}
		count++;
	}
	return count;
}

int listener_adopt(const int *fds, int n, bool original, struct listener *out, char *why,
		   size_t whylen)
{
	for (int i = 0; i < n; i++) {
		struct listener *l = &out[i];

		memset(l, 0, sizeof(*l));
		l->fd = original ? fds[i] : fcntl(fds[i], F_DUPFD_CLOEXEC, 0);
		if (l->fd < 0) {
			snprintf(why, whylen, "cannot duplicate inherited socket %d: %s", fds[i],
				 strerror(errno));
			while (i-- > 0)
				if (!original)
					close(out[i].fd);
			return -1;
		}
		l->addr.len = sizeof(l->addr.u);
		if (getsockname(l->fd, &l->addr.u.sa, &l->addr.len) < 0)
			memset(&l->addr, 0, sizeof(l->addr));
		/* TCP options mean nothing on a unix socket (they would fail, harmlessly). */
		if (l->addr.u.sa.sa_family != AF_UNIX)
			sock_set_forwarding(l->fd);
	}
	return n;
}

/* ---- unix sockets ---- */

/* The identity of the socket file at path (not following a symlink): 0, or -1 when there is
 * none (nothing there, or not a socket). */
static int file_id(const char *path, struct listener_file_id *id)
{
	union {
		struct file_handle fh;
		unsigned char room[sizeof(struct file_handle) + LISTENER_FILE_HANDLE_MAX];
	} h;
	struct stat st;
	int mount_id;

	memset(id, 0, sizeof(*id));
	if (lstat(path, &st) < 0 || !S_ISSOCK(st.st_mode))
		return -1;
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	id->ctime = st.st_ctim;
	h.fh.handle_bytes = LISTENER_FILE_HANDLE_MAX;
	if (name_to_handle_at(AT_FDCWD, path, &h.fh, &mount_id, 0) == 0) {
		id->handle_type = h.fh.handle_type;
		id->handle_len = h.fh.handle_bytes;
		memcpy(id->handle, h.fh.f_handle, h.fh.handle_bytes);
	}
	return 0;
}

/* Same file: same device and inode number, and the same handle (its generation tells a reused
 * inode number apart) or, without one, the same change time. */
static bool same_file(const struct listener_file_id *a, const struct listener_file_id *b)
{
	if (a->dev != b->dev || a->ino != b->ino || a->handle_len != b->handle_len)
		return false;
	if (a->handle_len > 0)
		return a->handle_type == b->handle_type &&
		       memcmp(a->handle, b->handle, a->handle_len) == 0;
	return a->ctime.tv_sec == b->ctime.tv_sec && a->ctime.tv_nsec == b->ctime.tv_nsec;
}

/*
 * What is at a unix socket's path before we bind. Returns 0 when the path is free (nothing
 * there, or a stale socket file we removed), or -1 with why: a live listener, something that is
 * not a socket, or a check that could not be made (no permission to connect to it, ...).
 */
static int unix_clear_path(const char *path, char *why, size_t whylen)
{
	struct sockaddr_un sa = { .sun_family = AF_UNIX };
	struct listener_file_id before, again;
	struct stat st;
	int fd, rc, err;

	if (lstat(path, &st) < 0) {
		if (errno == ENOENT)
			return 0;
		snprintf(why, whylen, "cannot check unix:%s: %s", path, strerror(errno));
		return -1;
	}
	if (!S_ISSOCK(st.st_mode)) {
		snprintf(why, whylen,
			 "unix:%s exists and is not a socket: not removing it (remove it or choose "
			 "another path)",
			 path);
		return -1;
	}
	if (file_id(path, &before) < 0)
		return 0; /* gone meanwhile (or replaced by a non-socket: bind will say) */
	/* A socket file: is anyone listening? Non-blocking, so that a live server with a full
	 * backlog answers EAGAIN at once instead of blocking us. */
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		snprintf(why, whylen, "cannot check unix:%s: socket: %s", path, strerror(errno));
		return -1;
	}
	memcpy(sa.sun_path, path, strlen(path) + 1);
	rc = connect(fd, (const struct sockaddr *)&sa, sizeof(sa));
	err = rc < 0 ? errno : 0;
	close(fd);
	if (rc == 0 || err == EAGAIN || err == EINPROGRESS) {
		snprintf(why, whylen, "unix:%s is in use by another process", path);
		return -1;
	}
	if (err == ENOENT) /* removed meanwhile */
		return 0;
	if (err != ECONNREFUSED) {
		snprintf(why, whylen, "cannot check whether unix:%s is in use: connect: %s", path,
			 strerror(err));
		return -1;
	}
	/* Stale: nobody listens. Remove it only if it is still the file we probed. */
	if (file_id(path, &again) < 0)
		return 0;
	if (!same_file(&before, &again)) {
		snprintf(why, whylen, "unix:%s changed while it was being checked", path);
		return -1;
	}
	if (unlink(path) < 0 && errno != ENOENT) {
		snprintf(why, whylen, "cannot remove stale socket file unix:%s: %s", path,
			 strerror(errno));
		return -1;
	}
	log_info("removed stale socket file unix:%s (nothing was listening on it)", path);
	return 0;
}

/* Why a unix bind failed, in words. */
static const char *unix_bind_hint(int err, bool abstract)
{
	switch (err) {
	case EADDRINUSE:
		return abstract ? " (in use by another process)"
				: " (created by another process meanwhile)";
	case ENOENT:
		return " (its directory does not exist)";
	case EACCES:
		return " (no permission to create a file in its directory)";
	case EROFS:
		return " (read-only file system)";
	default:
		return "";
	}
}

int listener_open_unix(const struct hostport *hp, unsigned int mode, struct listener *out,
		       char *why, size_t whylen)
{
	struct listener *l = &out[0];
	const char *path = hp->host;
	bool abstract;
	int fd, err;

	memset(l, 0, sizeof(*l));
	l->fd = -1;
	if (addr_resolve(hp, &l->addr, 1, why, whylen) != 1)
		return -1;
	abstract = path[0] == '@';
	if (!abstract && unix_clear_path(path, why, whylen) < 0)
		return -1;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(why, whylen, "cannot create a socket for unix:%s: %s", path,
			 strerror(errno));
		return -1;
	}
	/* Linux creates the file with this inode's mode minus the umask: never more open than
	 * mode, not even before the chmod below (so listen() need not wait for it). */
	if (!abstract && mode != 0)
		(void)fchmod(fd, mode & 07777);
	if (bind(fd, &l->addr.u.sa, l->addr.len) < 0) {
		err = errno;
		snprintf(why, whylen, "cannot listen on unix:%s: %s%s", path, strerror(err),
			 unix_bind_hint(err, abstract));
		close(fd);
		return -1;
	}
	/* Recorded at once, so that a failure below removes only our own file. */
	l->unix_file = !abstract && file_id(path, &l->unix_id) == 0;
	/* At once too: a bound socket nobody listens on looks stale to another starting
	 * process, which would remove its file. */
	if (listen(fd, (int)LISTENER_BACKLOG) < 0) {
		err = errno;
		snprintf(why, whylen, "cannot listen on unix:%s: %s", path, strerror(err));
		goto fail;
	}
	if (!abstract && mode != 0) {
		if (chmod(path, mode & 07777) < 0) {
			err = errno;
			snprintf(why, whylen, "cannot set mode %04o on unix:%s: %s", mode & 07777,
				 path, strerror(err));
			goto fail;
		}
		/* Again: the chmod changed the ctime, part of the identity on some file systems. */
		l->unix_file = file_id(path, &l->unix_id) == 0;
	}
	l->fd = fd;
	return 1;
fail:
	close(fd);
	(void)listener_unlink(l);
	l->unix_file = false;
	return -1;
}

int listener_dup(const struct listener *orig, struct listener *out, char *why, size_t whylen)
{
	char buf[ADDR_STRLEN];

	*out = *orig;
	out->multi_armed = out->single_armed = false;
	out->cancel_multi = out->cancel_single = false;
	out->fd = fcntl(orig->fd, F_DUPFD_CLOEXEC, 0);
	if (out->fd < 0) {
		snprintf(why, whylen, "cannot duplicate the listening socket of %s: %s",
			 addr_format(&orig->addr, buf, sizeof(buf)), strerror(errno));
		return -1;
	}
	return 0;
}

int listener_unlink(const struct listener *l)
{
	const char *path = l->addr.u.un.sun_path;
	struct listener_file_id now;
	int err;

	if (!l->unix_file || l->addr.u.sa.sa_family != AF_UNIX || path[0] != '/')
		return 0;
	if (file_id(path, &now) < 0 || !same_file(&now, &l->unix_id))
		return 0; /* gone, or replaced by someone else's: not ours to remove */
	if (unlink(path) < 0) {
		err = errno;
		if (err == ENOENT)
			return 0;
		log_warn("cannot remove socket file unix:%s: %s", path, strerror(err));
		return -err;
	}
	return 1;
}
