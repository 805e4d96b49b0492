/* listener: opens the listening sockets (or adopts systemd's) with the options every accepted
 * socket inherits. Reports every failure with its cause; never touches a ring. */
#include "uproxy/listener.h"

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "uproxy/util.h"

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
		sock_set_forwarding(l->fd);
		l->addr.len = sizeof(l->addr.u);
		if (getsockname(l->fd, &l->addr.u.sa, &l->addr.len) < 0)
			memset(&l->addr, 0, sizeof(l->addr));
	}
	return n;
}
