/* Shared helpers for the uproxy integration tests (see harness.h): data
 * streams, bounded socket I/O, process control of the binary under test,
 * /proc probes and in-process backends. */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <criterion/hooks.h>
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

/* ---- time ---------------------------------------------------------------- */

uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

void sleep_ms(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static int remaining(uint64_t deadline)
{
	uint64_t now = now_ms();

	return now >= deadline ? 0 : (int)(deadline - now);
}

/* ---- data -------------------------------------------------------------- */

static inline uint64_t splitmix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

void fill_random(void *buf, size_t n, uint64_t seed, uint64_t off)
{
	uint8_t *p = buf;
	uint64_t s = splitmix64(seed);

	while (n && (off & 7)) {
		*p++ = (uint8_t)(splitmix64(s + (off >> 3)) >> (8 * (off & 7)));
		off++;
		n--;
	}
	while (n >= 8) {
		uint64_t w = htole64(splitmix64(s + (off >> 3)));

		memcpy(p, &w, 8);
		p += 8;
		off += 8;
		n -= 8;
	}
	while (n) {
		*p++ = (uint8_t)(splitmix64(s + (off >> 3)) >> (8 * (off & 7)));
		off++;
		n--;
	}
}

uint64_t hash64_update(uint64_t h, const void *buf, size_t n)
{
	const uint8_t *p = buf;

	for (size_t i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ULL;
	}
	return h;
}

uint64_t hash64(const void *buf, size_t n)
{
	return hash64_update(HASH64_INIT, buf, n);
}

uint64_t stream_hash(uint64_t seed, uint64_t n)
{
	static _Thread_local uint8_t buf[CHUNK];
	uint64_t h = HASH64_INIT;

	for (uint64_t off = 0; off < n;) {
		size_t k = n - off < CHUNK ? (size_t)(n - off) : CHUNK;

		fill_random(buf, k, seed, off);
		h = hash64_update(h, buf, k);
		off += k;
	}
	return h;
}

void check_init(struct stream_check *c, uint64_t seed)
{
	c->seed = seed;
	c->len = 0;
	c->hash = HASH64_INIT;
	c->bad_at = -1;
}

void check_feed(struct stream_check *c, const void *buf, size_t n)
{
	uint8_t exp[4096];
	const uint8_t *p = buf;

	c->hash = hash64_update(c->hash, buf, n);
	if (c->bad_at >= 0) {
		c->len += n;
		return;
	}
	while (n) {
		size_t k = n < sizeof(exp) ? n : sizeof(exp);

		fill_random(exp, k, c->seed, c->len);
		if (memcmp(exp, p, k)) {
			for (size_t i = 0; i < k; i++) {
				if (exp[i] != p[i]) {
					c->bad_at = (int64_t)(c->len + i);
					break;
				}
			}
			c->len += n;
			return;
		}
		c->len += k;
		p += k;
		n -= k;
	}
}

/* ---- sockets --------------------------------------------------------------- */

static socklen_t loopback(int family, uint16_t port, struct sockaddr_storage *ss)
{
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET6) {
		struct sockaddr_in6 *a = (struct sockaddr_in6 *)ss;

		a->sin6_family = AF_INET6;
		a->sin6_addr = in6addr_loopback;
		a->sin6_port = htons(port);
		return sizeof(*a);
	}
	struct sockaddr_in *a = (struct sockaddr_in *)ss;

	a->sin_family = AF_INET;
	a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	a->sin_port = htons(port);
	return sizeof(*a);
}

bool have_ipv6(void)
{
	struct sockaddr_storage ss;
	socklen_t len = loopback(AF_INET6, 0, &ss);
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	bool ok;

	if (fd < 0)
		return false;
	ok = bind(fd, (struct sockaddr *)&ss, len) == 0;
	close(fd);
	return ok;
}

static uint16_t bound_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return 0;
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

/* One port that is free on the wildcard of both families if possible. */
static uint16_t free_port_once(void)
{
	int fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	uint16_t port = 0;

	if (fd >= 0) {
		struct sockaddr_in6 a = { .sin6_family = AF_INET6, .sin6_addr = in6addr_any };
		int off = 0;

		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof(off));
		if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0)
			port = bound_port(fd);
		close(fd);
		if (port)
			return port;
	}
	fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return 0;
	struct sockaddr_storage ss;
	socklen_t len = loopback(AF_INET, 0, &ss);

	if (bind(fd, (struct sockaddr *)&ss, len) == 0)
		port = bound_port(fd);
	close(fd);
	return port;
}

uint16_t free_port(void)
{
	static uint16_t given[64];
	static unsigned int ngiven;

	for (int tries = 0; tries < 100; tries++) {
		uint16_t port = free_port_once();
		bool dup = false;

		for (unsigned int i = 0; i < ngiven && i < 64; i++)
			dup |= given[i] == port;
		if (port && !dup) {
			given[ngiven++ % 64] = port;
			return port;
		}
	}
	cr_assert_fail("free_port: no free port found");
	return 0;
}

int set_nonblock(int fd, bool on)
{
	int fl = fcntl(fd, F_GETFL);

	if (fl < 0)
		return -1;
	return fcntl(fd, F_SETFL, on ? fl | O_NONBLOCK : fl & ~O_NONBLOCK);
}

void close_rst(int fd)
{
	struct linger lg = { .l_onoff = 1, .l_linger = 0 };

	setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(fd);
}

int tcp_connect(int family, uint16_t port, int timeout_ms)
{
	struct sockaddr_storage ss;
	socklen_t len = loopback(family, port, &ss);
	int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int err = 0;
	socklen_t elen = sizeof(err);

	if (fd < 0)
		return -1;
	if (connect(fd, (struct sockaddr *)&ss, len) == 0)
		return fd;
	if (errno != EINPROGRESS)
		goto fail;
	struct pollfd pfd = { .fd = fd, .events = POLLOUT };
	int n;

	do
		n = poll(&pfd, 1, timeout_ms);
	while (n < 0 && errno == EINTR);
	if (n == 0) {
		errno = ETIMEDOUT;
		goto fail;
	}
	if (n < 0 || getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen) < 0)
		goto fail;
	if (err) {
		errno = err;
		goto fail;
	}
	return fd;
fail:
	err = errno;
	close(fd);
	errno = err;
	return -1;
}

uint16_t sock_local_port(int fd)
{
	struct sockaddr_in a;
	socklen_t l = sizeof(a);

	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &l), 0);
	return ntohs(a.sin_port);
}

/* Connects the non-blocking fd to d and waits (≤ 2 s) until it is connected; asserts, what
 * naming the connection. */
static void connect_wait(int fd, const struct sockaddr_storage *d, socklen_t len,
			 const char *what)
{
	struct pollfd p = { .fd = fd, .events = POLLOUT };
	int err = 0;
	socklen_t elen = sizeof(err);

	if (connect(fd, (const struct sockaddr *)d, len) == 0)
		return;
	cr_assert_eq(errno, EINPROGRESS, "%s: %s", what, strerror(errno));
	cr_assert_eq(poll(&p, 1, 2000), 1, "%s: no answer in 2 s", what);
	cr_assert_eq(getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen), 0);
	cr_assert_eq(err, 0, "%s: %s", what, strerror(err));
}

int tcp_connect_rcvbuf(uint16_t port, int rcvbuf)
{
	struct sockaddr_storage d;
	socklen_t len = loopback(AF_INET, port, &d);
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	char what[48];

	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	cr_assert_eq(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)), 0,
		     "SO_RCVBUF: %s", strerror(errno));
	snprintf(what, sizeof(what), "connect to port %u", port);
	connect_wait(fd, &d, len, what);
	return fd;
}

int tcp_connect_from(const char *src, uint16_t port)
{
	struct sockaddr_storage s, d;
	int family = strchr(src, ':') ? AF_INET6 : AF_INET, fd;
	socklen_t len = loopback(family, 0, &s);
	void *sa = family == AF_INET6 ? (void *)&((struct sockaddr_in6 *)&s)->sin6_addr
				      : (void *)&((struct sockaddr_in *)&s)->sin_addr;
	char what[96];

	cr_assert_eq(inet_pton(family, src, sa), 1, "bad source %s", src);
	loopback(family, port, &d);
	fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	cr_assert_geq(fd, 0, "socket: %s", strerror(errno));
	cr_assert_eq(bind(fd, (struct sockaddr *)&s, len), 0, "bind %s: %s", src, strerror(errno));
	snprintf(what, sizeof(what), "connect from %s to port %u", src, port);
	connect_wait(fd, &d, len, what);
	return fd;
}

struct tcp_row {
	unsigned int lport, rport, state;
	unsigned long txq, rxq, inode;
	bool v6;
	bool lother_loop; /* local address in 127.0.0.0/8 but not 127.0.0.1 (IPv4 or v4-mapped) */
};

#define TCP_LISTEN 0x0A

static int scan_tcp(bool (*fn)(const struct tcp_row *, void *), void *arg)
{
	static const char *const files[] = { "/proc/net/tcp", "/proc/net/tcp6" };
	char line[512];
	int n = 0;

	for (size_t i = 0; i < 2; i++) {
		FILE *f = fopen(files[i], "re");

		if (!f)
			continue;
		if (!fgets(line, sizeof(line), f)) {
			fclose(f);
			continue;
		}
		while (fgets(line, sizeof(line), f)) {
			struct tcp_row r;
			char laddr[40];

			if (sscanf(line,
				   " %*s %39[0-9A-Fa-f]:%x %*[^:]:%x %x %lx:%lx %*x:%*x %*x %*u %*u %lu",
				   laddr, &r.lport, &r.rport, &r.state, &r.txq, &r.rxq, &r.inode) != 7)
				continue;
			r.v6 = i == 1;
			/* /proc/net/tcp{,6} print addresses as 32-bit words in host order:
			 * 127.x.y.z is "zzyyxx7F" (after "0000000000000000FFFF0000" if mapped). */
			{
				size_t alen = strlen(laddr);
				const char *v4 = alen == 8 ? laddr
						 : alen == 32 && strncasecmp(laddr,
									  "0000000000000000FFFF0000",
									  24) == 0
							 ? laddr + 24
							 : NULL;

				r.lother_loop = v4 != NULL && strncasecmp(v4 + 6, "7F", 2) == 0 &&
						strcasecmp(v4, "0100007F") != 0;
			}
			n += fn(&r, arg);
		}
		fclose(f);
	}
	return n;
}

struct rport_state {
	unsigned int rport, state;
};

static bool is_v4_conn_to(const struct tcp_row *r, void *arg)
{
	const struct rport_state *w = arg;

	return !r->v6 && r->rport == w->rport && r->inode != 0 &&
	       (w->state ? r->state == w->state : r->state != TCP_LISTEN);
}

int tcp4_socks_to(uint16_t rport, unsigned int state)
{
	struct rport_state w = { rport, state };

	return scan_tcp(is_v4_conn_to, &w);
}

static bool is_v4_listener(const struct tcp_row *r, void *arg)
{
	return !r->v6 && r->lport == *(const uint16_t *)arg && r->state == TCP_LISTEN;
}

bool tcp4_listening(uint16_t port)
{
	return scan_tcp(is_v4_listener, &port) > 0;
}

struct ports {
	unsigned int listen, up;
	uint64_t queued;
};

static bool owned_by_proxy(const struct tcp_row *r, void *arg)
{
	const struct ports *p = arg;

	if (!r->inode)
		return false;
	/* The proxies under test listen on 127.0.0.1, ::1, a wildcard or a test's own network
	 * (never another 127/8 address), while clients bound to sources like 127.0.1.5 can get
	 * the listen port's number as their ephemeral port: such a socket is not the proxy's. */
	return (r->lport == p->listen && !r->lother_loop && r->state != TCP_LISTEN) ||
	       r->rport == p->up;
}

struct inode_find {
	unsigned long inode;
	struct tcp_row row;
	bool found;
};

static bool match_inode(const struct tcp_row *r, void *arg)
{
	struct inode_find *f = arg;

	if (r->inode != f->inode)
		return false;
	f->row = *r;
	f->found = true;
	return true;
}

static const char *tcp_state_name(unsigned int st)
{
	static const char *const names[] = { "?", "ESTABLISHED", "SYN_SENT", "SYN_RECV",
					     "FIN_WAIT1", "FIN_WAIT2", "TIME_WAIT", "CLOSE",
					     "CLOSE_WAIT", "LAST_ACK", "LISTEN", "CLOSING" };

	return st < sizeof(names) / sizeof(names[0]) ? names[st] : "?";
}

void describe_fds(pid_t pid, char *buf, size_t len)
{
	char path[64], link[128];
	struct dirent *e;
	size_t off = 0;
	DIR *d;

	buf[0] = '\0';
	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	d = opendir(path);
	if (!d)
		return;
	while ((e = readdir(d)) && off + 1 < len) {
		struct inode_find f = { 0 };
		ssize_t n;

		if (e->d_name[0] == '.')
			continue;
		n = readlinkat(dirfd(d), e->d_name, link, sizeof(link) - 1);
		if (n < 0)
			continue;
		link[n] = '\0';
		if (sscanf(link, "socket:[%lu]", &f.inode) == 1)
			scan_tcp(match_inode, &f);
		if (f.found)
			off += (size_t)snprintf(buf + off, len - off, " %s=%s(%s %u→%u)", e->d_name, link,
						tcp_state_name(f.row.state), f.row.lport,
						f.row.rport);
		else
			off += (size_t)snprintf(buf + off, len - off, " %s=%s", e->d_name, link);
	}
	closedir(d);
}

int proxy_sock_count(uint16_t listen_port, uint16_t up_port)
{
	struct ports p = { listen_port, up_port, 0 };

	return scan_tcp(owned_by_proxy, &p);
}

int proxy_sock_count_pid(pid_t pid, uint16_t listen_port, uint16_t up_port)
{
	char path[64], link[128];
	struct dirent *e;
	int n = 0;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	d = opendir(path);
	if (!d)
		return 0;
	while ((e = readdir(d))) {
		struct inode_find f = { 0 };
		ssize_t k = readlinkat(dirfd(d), e->d_name, link, sizeof(link) - 1);

		if (k < 0)
			continue;
		link[k] = '\0';
		if (sscanf(link, "socket:[%lu]", &f.inode) != 1)
			continue;
		scan_tcp(match_inode, &f);
		if (f.found && owned_by_proxy(&f.row, &(struct ports){ listen_port, up_port, 0 }))
			n++;
	}
	closedir(d);
	return n;
}

static bool add_queued(const struct tcp_row *r, void *arg)
{
	struct ports *p = arg;

	if (r->state == TCP_LISTEN || (r->lport != p->listen && r->rport != p->listen))
		return false;
	p->queued += r->txq + r->rxq;
	return true;
}

uint64_t kernel_queued(uint16_t port)
{
	struct ports p = { port, 0, 0 };

	scan_tcp(add_queued, &p);
	return p.queued;
}

const char *io_end_name(enum io_end e)
{
	switch (e) {
	case IO_DONE: return "done";
	case IO_EOF: return "EOF";
	case IO_RESET: return "reset";
	case IO_TIMEOUT: return "timeout";
	default: return "error";
	}
}

static enum io_end err_end(int err)
{
	return err == ECONNRESET || err == EPIPE ? IO_RESET : IO_ERROR;
}

static bool wait_fd(int fd, short ev, uint64_t deadline)
{
	struct pollfd pfd = { .fd = fd, .events = ev };
	int n;

	do
		n = poll(&pfd, 1, remaining(deadline));
	while (n < 0 && errno == EINTR);
	return n > 0;
}

enum io_end io_write_all(int fd, const void *buf, size_t n, int timeout_ms, size_t *done)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	const uint8_t *p = buf;
	size_t off = 0;
	enum io_end end = IO_DONE;

	while (off < n) {
		ssize_t k = send(fd, p + off, n - off, MSG_NOSIGNAL);

		if (k > 0) {
			off += (size_t)k;
		} else if (k < 0 && (errno == EAGAIN || errno == EINTR)) {
			if (!wait_fd(fd, POLLOUT, deadline) && remaining(deadline) == 0) {
				end = IO_TIMEOUT;
				break;
			}
		} else {
			end = err_end(errno);
			break;
		}
	}
	if (done)
		*done = off;
	return end;
}

enum io_end io_read_exact(int fd, void *buf, size_t n, int timeout_ms, size_t *done)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	uint8_t *p = buf;
	size_t off = 0;
	enum io_end end = IO_DONE;

	while (off < n) {
		ssize_t k = recv(fd, p + off, n - off, 0);

		if (k > 0) {
			off += (size_t)k;
		} else if (k == 0) {
			end = IO_EOF;
			break;
		} else if (errno == EAGAIN || errno == EINTR) {
			if (!wait_fd(fd, POLLIN, deadline) && remaining(deadline) == 0) {
				end = IO_TIMEOUT;
				break;
			}
		} else {
			end = err_end(errno);
			break;
		}
	}
	if (done)
		*done = off;
	return end;
}

enum io_end io_write_stream(int fd, uint64_t seed, uint64_t off, uint64_t len,
			    int timeout_ms, uint64_t *done)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	uint8_t *buf = malloc(CHUNK);
	uint64_t sent = 0;
	enum io_end end = IO_DONE;

	cr_assert_not_null(buf);
	while (sent < len) {
		size_t k = len - sent < CHUNK ? (size_t)(len - sent) : CHUNK;
		size_t w = 0;

		fill_random(buf, k, seed, off + sent);
		end = io_write_all(fd, buf, k, remaining(deadline), &w);
		sent += w;
		if (end != IO_DONE)
			break;
	}
	free(buf);
	if (done)
		*done = sent;
	return end;
}

enum io_end io_read_stream(int fd, struct stream_check *c, uint64_t max, int timeout_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	uint8_t *buf = malloc(CHUNK);
	uint64_t got = 0;
	enum io_end end = IO_DONE;

	cr_assert_not_null(buf);
	while (got < max) {
		size_t want = max - got < CHUNK ? (size_t)(max - got) : CHUNK;
		ssize_t k = recv(fd, buf, want, 0);

		if (k > 0) {
			check_feed(c, buf, (size_t)k);
			got += (uint64_t)k;
		} else if (k == 0) {
			end = IO_EOF;
			break;
		} else if (errno == EAGAIN || errno == EINTR) {
			if (!wait_fd(fd, POLLIN, deadline) && remaining(deadline) == 0) {
				end = IO_TIMEOUT;
				break;
			}
		} else {
			end = err_end(errno);
			break;
		}
	}
	free(buf);
	return end;
}

enum io_end io_wait_close(int fd, int timeout_ms, uint64_t *extra)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	uint8_t buf[16384];
	uint64_t got = 0;
	enum io_end end;

	for (;;) {
		ssize_t k = recv(fd, buf, sizeof(buf), 0);

		if (k > 0) {
			got += (uint64_t)k;
		} else if (k == 0) {
			end = IO_EOF;
			break;
		} else if (errno == EAGAIN || errno == EINTR) {
			if (!wait_fd(fd, POLLIN, deadline) && remaining(deadline) == 0) {
				end = IO_TIMEOUT;
				break;
			}
		} else {
			end = err_end(errno);
			break;
		}
	}
	if (extra)
		*extra = got;
	return end;
}

void xfer_run(struct xfer *x, int fd, uint64_t send_seed, uint64_t send_len, bool shut_wr,
	      uint64_t recv_seed, int timeout_ms)
{
	uint64_t start = now_ms(), deadline = start + (uint64_t)timeout_ms;
	uint8_t *out = malloc(CHUNK), *in = malloc(CHUNK);
	size_t out_len = 0, out_off = 0;
	bool send_over = false, recv_over = false;

	cr_assert(out && in);
	memset(x, 0, sizeof(*x));
	check_init(&x->rx, recv_seed);
	x->send_end = IO_DONE;
	x->recv_end = IO_TIMEOUT;
	if (send_len == 0) {
		send_over = true;
		if (shut_wr)
			shutdown(fd, SHUT_WR);
	}
	while (!(send_over && recv_over)) {
		struct pollfd pfd = { .fd = fd, .events = 0 };
		int n;

		if (!send_over)
			pfd.events |= POLLOUT;
		if (!recv_over)
			pfd.events |= POLLIN;
		if (remaining(deadline) == 0)
			break;
		n = poll(&pfd, 1, remaining(deadline) < 100 ? remaining(deadline) : 100);
		if (n < 0 && errno != EINTR)
			break;
		if (!recv_over) {
			for (int i = 0; i < 16; i++) {
				ssize_t k = recv(fd, in, CHUNK, 0);

				if (k > 0) {
					check_feed(&x->rx, in, (size_t)k);
					continue;
				}
				if (k == 0) {
					x->recv_end = IO_EOF;
					recv_over = true;
				} else if (errno != EAGAIN && errno != EINTR) {
					x->recv_end = err_end(errno);
					recv_over = true;
				}
				break;
			}
		}
		while (!send_over) {
			if (out_off == out_len) {
				size_t k = send_len - x->sent < CHUNK ? (size_t)(send_len - x->sent)
								      : CHUNK;

				fill_random(out, k, send_seed, x->sent);
				out_len = k;
				out_off = 0;
			}
			ssize_t k = send(fd, out + out_off, out_len - out_off, MSG_NOSIGNAL);

			if (k < 0) {
				if (errno != EAGAIN && errno != EINTR) {
					x->send_end = err_end(errno);
					send_over = true;
				}
				break;
			}
			out_off += (size_t)k;
			x->sent += (uint64_t)k;
			if (x->sent == send_len) {
				send_over = true;
				if (shut_wr)
					shutdown(fd, SHUT_WR);
			}
		}
	}
	if (!send_over)
		x->send_end = IO_TIMEOUT;
	x->ms = now_ms() - start;
	free(out);
	free(in);
}

bool echo_roundtrip(int fd, uint64_t seed, size_t n, int timeout_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	struct stream_check c;
	uint64_t sent = 0;

	check_init(&c, seed);
	if (io_write_stream(fd, seed, 0, n, timeout_ms, &sent) != IO_DONE)
		return false;
	if (io_read_stream(fd, &c, n, remaining(deadline)) != IO_DONE)
		return false;
	return c.len == n && c.bad_at < 0;
}

/* ---- processes ------------------------------------------------------------- */

#define MAX_CHILDREN 32
static pid_t children[MAX_CHILDREN];

static void track(pid_t pid, bool add)
{
	for (int i = 0; i < MAX_CHILDREN; i++) {
		if (add ? children[i] == 0 : children[i] == pid) {
			children[i] = add ? pid : 0;
			return;
		}
	}
}

/* Leaves no child of ours behind when a test aborts. */
__attribute__((destructor)) static void kill_children(void)
{
	for (int i = 0; i < MAX_CHILDREN; i++) {
		if (children[i] > 0) {
			kill(children[i], SIGKILL);
			waitpid(children[i], NULL, 0);
			children[i] = 0;
		}
	}
}

const char *uproxy_bin(void)
{
	const char *p = getenv("UPROXY_BIN");

	if (!p || !*p)
		p = "build/uproxy";
	if (access(p, X_OK) != 0)
		cr_assert_fail("no uproxy binary at '%s' (set UPROXY_BIN): %s", p, strerror(errno));
	return p;
}

const char *test_backend(void)
{
	const char *b = getenv("UPROXY_TEST_BACKEND");

	return b != NULL && strcmp(b, "epoll") == 0 ? "epoll" : "io_uring";
}

/* UPROXY_TEST_BACKEND=epoll (or io_uring, auto): every uproxy the tests start, whichever way,
 * runs with --backend that, placed first so that a test's own arguments still come last. A
 * test that names its backend itself (--backend in its arguments) keeps it. */
static char *const *with_backend(char *const argv[], char *buf[], size_t cap)
{
	const char *b = getenv("UPROXY_TEST_BACKEND"), *base = strrchr(argv[0], '/');
	size_t n = 0;

	base = base != NULL ? base + 1 : argv[0];
	if (b == NULL || *b == '\0' || strcmp(base, "uproxy") != 0)
		return argv;
	for (size_t i = 1; argv[i] != NULL; i++)
		if (strcmp(argv[i], "--backend") == 0 || strncmp(argv[i], "--backend=", 10) == 0)
			return argv;
	buf[n++] = argv[0];
	buf[n++] = "--backend";
	buf[n++] = (char *)b;
	for (size_t i = 1; argv[i] != NULL && n + 1 < cap; i++)
		buf[n++] = argv[i];
	buf[n] = NULL;
	return buf;
}

int proc_spawn(struct proc *p, char *const argv_in[], long soft, long hard)
{
	pid_t parent = getpid();
	char *buf[160];
	char *const *argv = with_backend(argv_in, buf, sizeof(buf) / sizeof(buf[0]));
	int devnull;

	memset(p, 0, sizeof(*p));
	p->out_fd = memfd_create("uproxy-stdout", MFD_CLOEXEC);
	p->err_fd = memfd_create("uproxy-stderr", MFD_CLOEXEC);
	devnull = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (p->out_fd < 0 || p->err_fd < 0 || devnull < 0)
		return -errno;
	p->pid = fork();
	if (p->pid < 0)
		return -errno;
	if (p->pid == 0) {
		struct rlimit rl = { (rlim_t)(soft > 0 ? soft : hard), (rlim_t)hard };
		struct sigaction sa = { .sa_handler = SIG_DFL };
		sigset_t none;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		for (int s = 1; s < NSIG; s++)
			sigaction(s, &sa, NULL);
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		if (dup2(devnull, 0) < 0 || dup2(p->out_fd, 1) < 0 || dup2(p->err_fd, 2) < 0)
			_exit(127);
		if (hard > 0 && setrlimit(RLIMIT_NOFILE, &rl) < 0)
			_exit(127);
		close_range(3, ~0U, 0);
		execv(argv[0], argv);
		_exit(127);
	}
	close(devnull);
	track(p->pid, true);
	return 0;
}

static bool reap(struct proc *p, int flags)
{
	int st;
	pid_t r;

	if (p->reaped)
		return true;
	do
		r = waitpid(p->pid, &st, flags);
	while (r < 0 && errno == EINTR);
	if (r == p->pid) {
		p->reaped = true;
		p->status = st;
		track(p->pid, false);
		return true;
	}
	return false;
}

bool proc_wait(struct proc *p, int timeout_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;

	for (;;) {
		if (reap(p, WNOHANG))
			return true;
		if (remaining(deadline) == 0)
			return false;
		sleep_ms(2);
	}
}

void proc_kill(struct proc *p)
{
	if (p->pid <= 0 || p->reaped)
		return;
	kill(p->pid, SIGKILL);
	reap(p, 0);
}

static char *read_memfd(int fd)
{
	struct stat st;
	char *s;
	ssize_t n;

	if (fd < 0 || fstat(fd, &st) < 0)
		return strdup("");
	s = malloc((size_t)st.st_size + 1);
	cr_assert_not_null(s);
	n = pread(fd, s, (size_t)st.st_size, 0);
	s[n > 0 ? n : 0] = '\0';
	return s;
}

char *proc_stdout(struct proc *p)
{
	return read_memfd(p->out_fd);
}

char *proc_stderr(struct proc *p)
{
	return read_memfd(p->err_fd);
}

void proc_release(struct proc *p)
{
	proc_kill(p);
	if (p->out_fd > 0)
		close(p->out_fd);
	if (p->err_fd > 0)
		close(p->err_fd);
	p->out_fd = p->err_fd = -1;
}

const char *status_str(const struct proc *p, char *buf, size_t len)
{
	if (!p->reaped)
		snprintf(buf, len, "still running");
	else if (WIFEXITED(p->status))
		snprintf(buf, len, "exited %d", WEXITSTATUS(p->status));
	else if (WIFSIGNALED(p->status))
		snprintf(buf, len, "killed by signal %d (%s)", WTERMSIG(p->status),
			 strsignal(WTERMSIG(p->status)));
	else
		snprintf(buf, len, "status 0x%x", p->status);
	return buf;
}

void run_uproxy(struct run_result *r, int timeout_ms, const char *const args[])
{
	char *argv[64];
	size_t n = 0;
	struct proc p;
	uint64_t t0;

	memset(r, 0, sizeof(*r));
	argv[n++] = (char *)uproxy_bin();
	for (size_t i = 0; args[i] && n < 63; i++)
		argv[n++] = (char *)args[i];
	argv[n] = NULL;
	t0 = now_ms();
	cr_assert_eq(proc_spawn(&p, argv, 0, 0), 0, "cannot spawn %s", argv[0]);
	r->exited = proc_wait(&p, timeout_ms);
	r->ms = now_ms() - t0;
	if (!r->exited)
		proc_kill(&p);
	if (WIFEXITED(p.status))
		r->code = WEXITSTATUS(p.status);
	else
		r->code = -WTERMSIG(p.status);
	r->out = proc_stdout(&p);
	r->err = proc_stderr(&p);
	proc_release(&p);
}

void run_result_free(struct run_result *r)
{
	free(r->out);
	free(r->err);
	r->out = r->err = NULL;
}

/* ---- /proc probes -------------------------------------------------------- */

int count_fds(pid_t pid)
{
	char path[64];
	DIR *d;
	struct dirent *e;
	int n = 0;

	snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
	d = opendir(path);
	if (!d)
		return -1;
	while ((e = readdir(d)))
		n += e->d_name[0] != '.';
	closedir(d);
	return n;
}

long nofile_soft_of(pid_t pid)
{
	char path[64], line[256];
	long soft = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/limits", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Max open files %ld", &soft) == 1)
			break;
	fclose(f);
	return soft;
}

long rss_kib(pid_t pid)
{
	char path[64], line[256];
	long kib = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

int thread_count(pid_t pid)
{
	char path[64], line[256];
	int n = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "re");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "Threads: %d", &n) == 1)
			break;
	fclose(f);
	return n;
}

long cpu_ticks(pid_t pid)
{
	char path[64], buf[1024], *p;
	unsigned long ut, st;
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return -1;
	buf[n] = '\0';
	p = strrchr(buf, ')');
	/* fields 3..13 after the comm, then utime (14) and stime (15) */
	if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
			 &ut, &st) != 2)
		return -1;
	return (long)(ut + st);
}

void raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
}

/* ---- the proxy under test ------------------------------------------------ */

/* Once the proxy is up and idle: its fd count once steady for 200 ms (≤ 2 s), and its RSS. */
static void take_baselines(struct proxy *px)
{
	px->base_fds = count_fds(px->proc.pid);
	for (int i = 0, steady = 0; i < 100 && steady < 10; i++) {
		int n;

		sleep_ms(20);
		n = count_fds(px->proc.pid);
		steady = n == px->base_fds ? steady + 1 : 0;
		px->base_fds = n;
	}
	px->base_rss_kib = rss_kib(px->proc.pid);
}

static void fmt_loopback(char *buf, size_t len, uint16_t port)
{
	snprintf(buf, len, "127.0.0.1:%u", port);
}

void proxy_start(struct proxy *px, const struct proxy_cfg *cfg)
{
	char listen[128], upstream[128], st[64];
	char *argv[32];

	memset(px, 0, sizeof(*px));
	px->up_port = cfg->up_port;
	px->family = cfg->probe_family ? cfg->probe_family : AF_INET;
	for (int attempt = 0; attempt < 3; attempt++) {
		size_t n = 0;
		bool ready = false;

		px->port = cfg->listen ? cfg->port : free_port();
		if (cfg->listen)
			snprintf(listen, sizeof(listen), "%s", cfg->listen);
		else
			fmt_loopback(listen, sizeof(listen), px->port);
		if (cfg->upstream)
			snprintf(upstream, sizeof(upstream), "%s", cfg->upstream);
		else
			fmt_loopback(upstream, sizeof(upstream), cfg->up_port);
		argv[n++] = (char *)uproxy_bin();
		argv[n++] = "--listen";
		argv[n++] = listen;
		argv[n++] = "--upstream";
		argv[n++] = upstream;
		for (size_t i = 0; cfg->extra[i] && n < 31; i++)
			argv[n++] = (char *)cfg->extra[i];
		argv[n] = NULL;

		cr_assert_eq(proc_spawn(&px->proc, argv, cfg->nofile_soft, cfg->nofile), 0,
			     "cannot spawn %s", argv[0]);
		for (int i = 0; i < 100 && !ready; i++) {
			int fd;

			if (reap(&px->proc, WNOHANG))
				break;
			fd = tcp_connect(px->family, px->port, 20);
			if (fd >= 0) {
				close(fd);
				ready = true;
			} else {
				sleep_ms(20);
			}
		}
		if (ready)
			break;
		if (!px->proc.reaped)
			proc_kill(&px->proc);
		char *err = proc_stderr(&px->proc);
		bool retry = !cfg->listen && WIFEXITED(px->proc.status) &&
			     WEXITSTATUS(px->proc.status) == 1 && attempt < 2;

		if (!retry)
			cr_assert_fail("uproxy --listen %s --upstream %s not ready within 2 s (%s); "
				       "stderr:\n%s", listen, upstream,
				       status_str(&px->proc, st, sizeof(st)), err);
		free(err);
		proc_release(&px->proc);
	}
	/* let the readiness probe's session finish (no sockets left, fd count
	 * steady for 200 ms), then take the baselines */
	for (int i = 0; i < 100 && proxy_sock_count(px->port, px->up_port) > 0; i++)
		sleep_ms(10);
	take_baselines(px);
}

bool proxy_stop(struct proxy *px)
{
	bool clean;

	if (px->proc.pid <= 0)
		return false;
	if (!px->proc.reaped) {
		kill(px->proc.pid, SIGTERM);
		if (!proc_wait(&px->proc, 2000))
			proc_kill(&px->proc);
	}
	clean = WIFEXITED(px->proc.status) && WEXITSTATUS(px->proc.status) == 0;
	if (!clean) {
		char st[64], *err = proc_stderr(&px->proc);
		size_t n = strlen(err);

		cr_log_info("the proxy %s on SIGTERM; end of its stderr:\n%s",
			    status_str(&px->proc, st, sizeof(st)), n > 4096 ? err + n - 4096 : err);
		free(err);
	}
	return clean;
}

int proxy_fds(const struct proxy *px)
{
	return count_fds(px->proc.pid);
}

bool proxy_wait_idle(const struct proxy *px, int timeout_ms, int *fds, int *socks)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;

	for (;;) {
		*fds = count_fds(px->proc.pid);
		*socks = proxy_sock_count(px->port, px->up_port);
		if (*fds == px->base_fds && *socks == 0)
			return true;
		if (remaining(deadline) == 0)
			return false;
		sleep_ms(10);
	}
}

bool proxy_is_sanitized(const struct proxy *px)
{
	char path[64], line[512];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", (int)px->proc.pid);
	f = fopen(path, "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = strstr(line, "libasan") || strstr(line, "libtsan");
	fclose(f);
	return found;
}

char *proxy_stderr(struct proxy *px)
{
	return proc_stderr(&px->proc);
}

long proxy_wait_log(struct proxy *px, const char *needle, long from, int timeout_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;

	for (;;) {
		char *err = proxy_stderr(px);
		long len = (long)strlen(err), at = -1;

		if (from <= len) {
			char *p = strstr(err + from, needle);

			if (p)
				at = p - err;
		}
		free(err);
		if (at >= 0 || now_ms() >= deadline)
			return at;
		sleep_ms(20);
	}
}

int proxy_log_count(struct proxy *px, const char *needle)
{
	char *err = proxy_stderr(px), *p = err;
	int n = 0;

	while ((p = strstr(p, needle)) != NULL) {
		n++;
		p += strlen(needle);
	}
	free(err);
	return n;
}

/* ---- backends ---------------------------------------------------------------- */

void backend_adopt(struct backend *b, int lfd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	memset(b, 0, sizeof(*b));
	pthread_mutex_init(&b->mu, NULL);
	cr_assert_eq(getsockname(lfd, (struct sockaddr *)&ss, &len), 0, "backend getsockname: %s",
		     strerror(errno));
	b->lfd = lfd;
	b->family = ss.ss_family;
	b->port = bound_port(lfd);
	b->stop_efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	cr_assert_geq(b->stop_efd, 0);
}

/* A blocking socket bound to the loopback address of family on port (0: any free one), with
 * SO_REUSEADDR when reuse; asserts. */
static int bind_loopback(int family, uint16_t port, bool reuse)
{
	struct sockaddr_storage ss;
	socklen_t len = loopback(family, port, &ss);
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	cr_assert_geq(fd, 0, "backend socket: %s", strerror(errno));
	if (reuse)
		setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	cr_assert_eq(bind(fd, (struct sockaddr *)&ss, len), 0, "backend bind to port %u: %s", port,
		     strerror(errno));
	return fd;
}

void backend_bind(struct backend *b, int family)
{
	backend_adopt(b, bind_loopback(family, 0, false));
}

void backend_bind_on(struct backend *b, uint16_t port)
{
	backend_adopt(b, bind_loopback(AF_INET, port, true));
}

struct bconn {
	int fd;
	uint32_t events;
	bool rd_eof;
	uint8_t *buf;
	size_t head, len;
	uint64_t off, total, hash;
	struct bconn *next, *prev;
};

#define BCONN_BUF (64 * 1024)

struct bserver {
	struct backend *b;
	int ep;
	struct bconn *conns;
};

static void bconn_close(struct bserver *s, struct bconn *c)
{
	epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		s->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	free(c->buf);
	free(c);
	atomic_fetch_sub(&s->b->open, 1);
}

static void sink_record(struct backend *b, struct bconn *c)
{
	pthread_mutex_lock(&b->mu);
	if (b->nresults < BK_MAX_RESULTS)
		b->results[b->nresults++] = (struct sink_result){ c->total, c->hash };
	pthread_mutex_unlock(&b->mu);
}

/* Returns false if the connection was closed. */
static bool bconn_io(struct bserver *s, struct bconn *c, uint32_t ev)
{
	struct backend *b = s->b;
	bool progress = true;

	while (progress) {
		progress = false;
		/* read while there is room (sink and source discard) */
		if (!c->rd_eof && (b->mode != BK_ECHO || c->head + c->len < BCONN_BUF)) {
			uint8_t *dst = c->buf;
			size_t room = BCONN_BUF;
			ssize_t k;

			if (b->mode == BK_ECHO) {
				dst = c->buf + c->head + c->len;
				room = BCONN_BUF - c->head - c->len;
			}
			k = recv(c->fd, dst, room, 0);
			if (k > 0) {
				progress = true;
				c->total += (uint64_t)k;
				atomic_fetch_add(&b->bytes_in, (unsigned long long)k);
				if (b->mode == BK_ECHO)
					c->len += (size_t)k;
				else if (b->mode == BK_SINK)
					c->hash = hash64_update(c->hash, dst, (size_t)k);
			} else if (k == 0) {
				c->rd_eof = true;
				if (b->mode == BK_SINK) {
					sink_record(b, c);
					bconn_close(s, c);
					return false;
				}
			} else if (errno != EAGAIN && errno != EINTR) {
				bconn_close(s, c);
				return false;
			}
		}
		/* write what is due */
		if (b->mode == BK_ECHO && c->len) {
			ssize_t k = send(c->fd, c->buf + c->head, c->len, MSG_NOSIGNAL);

			if (k > 0) {
				progress = true;
				c->head += (size_t)k;
				c->len -= (size_t)k;
				if (!c->len)
					c->head = 0;
			} else if (k < 0 && errno != EAGAIN && errno != EINTR) {
				bconn_close(s, c);
				return false;
			}
			if (c->len && c->head + c->len == BCONN_BUF && c->head) {
				memmove(c->buf, c->buf + c->head, c->len);
				c->head = 0;
				progress = true;
			}
		} else if (b->mode == BK_SOURCE && c->off < b->source_len) {
			uint8_t chunk[16384];
			size_t k = b->source_len - c->off < sizeof(chunk) ?
					   (size_t)(b->source_len - c->off) : sizeof(chunk);
			ssize_t w;

			fill_random(chunk, k, b->source_seed, c->off);
			w = send(c->fd, chunk, k, MSG_NOSIGNAL);
			if (w > 0) {
				progress = true;
				c->off += (uint64_t)w;
			} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
				bconn_close(s, c);
				return false;
			}
		}
	}
	if ((b->mode == BK_ECHO && c->rd_eof && !c->len) ||
	    (b->mode == BK_SOURCE && c->off == b->source_len)) {
		shutdown(c->fd, SHUT_WR);
		bconn_close(s, c);
		return false;
	}
	if ((ev & (EPOLLERR | EPOLLHUP)) && !(ev & EPOLLIN) && b->mode != BK_SOURCE) {
		bconn_close(s, c);
		return false;
	}

	uint32_t want = 0;

	if (!c->rd_eof && (b->mode != BK_ECHO || c->head + c->len < BCONN_BUF))
		want |= EPOLLIN;
	if ((b->mode == BK_ECHO && c->len) || b->mode == BK_SOURCE)
		want |= EPOLLOUT;
	if (want != c->events) {
		struct epoll_event e = { .events = want, .data.ptr = c };

		epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &e);
		c->events = want;
	}
	return true;
}

static void bump_peak(struct backend *b)
{
	int open = atomic_fetch_add(&b->open, 1) + 1;
	int peak = atomic_load(&b->peak_open);

	while (open > peak && !atomic_compare_exchange_weak(&b->peak_open, &peak, open))
		;
}

static void *bserver_main(void *arg)
{
	struct bserver s = { .b = arg };
	struct backend *b = s.b;
	struct epoll_event evs[256];
	struct epoll_event e = { .events = EPOLLIN, .data.ptr = NULL };

	s.ep = epoll_create1(EPOLL_CLOEXEC);
	epoll_ctl(s.ep, EPOLL_CTL_ADD, b->lfd, &e);
	e.data.ptr = &s;
	epoll_ctl(s.ep, EPOLL_CTL_ADD, b->stop_efd, &e);
	while (!atomic_load(&b->stopping)) {
		int n = epoll_wait(s.ep, evs, 256, 200);

		for (int i = 0; i < n; i++) {
			void *p = evs[i].data.ptr;

			if (p == &s)
				continue;
			if (p) {
				bconn_io(&s, p, evs[i].events);
				continue;
			}
			for (int k = 0; k < 64; k++) {
				int fd = accept4(b->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

				if (fd < 0)
					break;
				struct bconn *c = calloc(1, sizeof(*c));

				c->fd = fd;
				c->hash = HASH64_INIT;
				c->buf = malloc(BCONN_BUF);
				c->next = s.conns;
				if (s.conns)
					s.conns->prev = c;
				s.conns = c;
				c->events = EPOLLIN | (b->mode == BK_SOURCE ? EPOLLOUT : 0);
				struct epoll_event ce = { .events = c->events, .data.ptr = c };

				epoll_ctl(s.ep, EPOLL_CTL_ADD, fd, &ce);
				atomic_fetch_add(&b->accepted, 1);
				bump_peak(b);
				bconn_io(&s, c, 0);
			}
		}
	}
	while (s.conns)
		bconn_close(&s, s.conns);
	close(s.ep);
	return NULL;
}

struct hstart {
	struct backend *b;
	int fd;
};

static void *handler_main(void *arg)
{
	struct hstart h = *(struct hstart *)arg;

	free(arg);
	h.b->handler(h.fd, h.b->arg);
	atomic_fetch_sub(&h.b->open, 1);
	return NULL;
}

static void *haccept_main(void *arg)
{
	struct backend *b = arg;

	while (!atomic_load(&b->stopping)) {
		struct pollfd pfd[2] = { { b->lfd, POLLIN, 0 }, { b->stop_efd, POLLIN, 0 } };

		if (poll(pfd, 2, 200) <= 0 || !(pfd[0].revents & POLLIN))
			continue;
		int fd = accept4(b->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0)
			continue;
		atomic_fetch_add(&b->accepted, 1);
		pthread_mutex_lock(&b->mu);
		if (b->nhandlers == BK_MAX_HANDLERS) {
			pthread_mutex_unlock(&b->mu);
			close(fd);
			continue;
		}
		struct hstart *h = malloc(sizeof(*h));

		h->b = b;
		h->fd = fd;
		bump_peak(b);
		if (pthread_create(&b->handlers[b->nhandlers], NULL, handler_main, h) == 0) {
			b->nhandlers++;
		} else {
			atomic_fetch_sub(&b->open, 1);
			close(fd);
			free(h);
		}
		pthread_mutex_unlock(&b->mu);
	}
	return NULL;
}

void backend_run(struct backend *b, enum backend_mode mode)
{
	b->mode = mode;
	cr_assert_eq(listen(b->lfd, 4096), 0, "backend listen: %s", strerror(errno));
	set_nonblock(b->lfd, true);
	cr_assert_eq(pthread_create(&b->thr, NULL, mode == BK_HANDLER ? haccept_main : bserver_main,
				    b), 0);
	b->running = true;
}

void backend_stop(struct backend *b)
{
	uint64_t one = 1;

	atomic_store(&b->stopping, true);
	if (b->running) {
		if (write(b->stop_efd, &one, sizeof(one)) < 0) {
			/* the flag alone stops it within 200 ms */
		}
		pthread_join(b->thr, NULL);
		for (int i = 0; i < b->nhandlers; i++)
			pthread_join(b->handlers[i], NULL);
		b->running = false;
	}
	if (b->lfd >= 0)
		close(b->lfd);
	if (b->stop_efd >= 0)
		close(b->stop_efd);
	b->lfd = b->stop_efd = -1;
}

bool backend_wait_sink(struct backend *b, int timeout_ms, struct sink_result *out)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;

	for (;;) {
		pthread_mutex_lock(&b->mu);
		for (int i = 0; i < b->nresults; i++) {
			if (b->results[i].len) {
				*out = b->results[i];
				pthread_mutex_unlock(&b->mu);
				return true;
			}
		}
		pthread_mutex_unlock(&b->mu);
		if (remaining(deadline) == 0)
			return false;
		sleep_ms(5);
	}
}

void setup(struct backend *b, struct proxy *px, enum backend_mode mode,
	   const char *const extra[])
{
	struct proxy_cfg cfg = { 0 };

	backend_bind(b, AF_INET);
	cfg.up_port = b->port;
	for (size_t i = 0; extra && extra[i] && i < 11; i++)
		cfg.extra[i] = extra[i];
	proxy_start(px, &cfg);
	backend_run(b, mode);
}

void assert_proxy_idle(const struct proxy *px, int timeout_ms, const char *what)
{
	int fds, socks;

	char desc[4096];

	if (proxy_wait_idle(px, timeout_ms, &fds, &socks))
		return;
	describe_fds(px->proc.pid, desc, sizeof(desc));
	cr_assert_fail("%s: after %d ms the proxy still has %d fds (baseline %d) and holds %d "
		       "sockets for ports %u/%u (want 0); its fds:%s",
		       what, timeout_ms, fds, px->base_fds, socks, px->port, px->up_port, desc);
}

/* ---- many connections at once ------------------------------------------- */

struct mconn {
	int fd;
	bool connecting, shut, over;
	uint64_t sent;
	struct stream_check c;
};

static void mc_finish(struct multi_stats *st, struct mconn *m, int i, int *counter,
		      const char *what, uint64_t len)
{
	(*counter)++;
	if (counter != &st->ok && !st->first_problem[0])
		snprintf(st->first_problem, sizeof(st->first_problem),
			 "connection %d: %s after sending %llu and receiving %llu of %llu bytes "
			 "(first bad byte at %lld)", i, what, (unsigned long long)m->sent,
			 (unsigned long long)m->c.len, (unsigned long long)len,
			 (long long)m->c.bad_at);
	m->over = true;
	if (m->fd >= 0)
		close(m->fd);
	m->fd = -1;
}

void multi_echo(struct multi_stats *st, int n, int family, uint16_t port, uint64_t len,
		uint64_t warm, uint64_t seed_base, int timeout_ms)
{
	uint64_t start = now_ms(), deadline = start + (uint64_t)timeout_ms;
	struct mconn *mc = calloc((size_t)n, sizeof(*mc));
	struct pollfd *pfd = calloc((size_t)n, sizeof(*pfd));
	int *idx = calloc((size_t)n, sizeof(*idx));
	uint8_t *buf = malloc(16384);
	uint64_t limit = warm ? warm : len;
	int left = n;

	cr_assert(mc && pfd && idx && buf);
	memset(st, 0, sizeof(*st));
	st->n = n;
	for (int i = 0; i < n; i++) {
		struct sockaddr_storage ss;
		socklen_t sl = loopback(family, port, &ss);

		check_init(&mc[i].c, seed_base + (uint64_t)i);
		mc[i].fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (mc[i].fd < 0) {
			mc_finish(st, &mc[i], i, &st->connect_failed, strerror(errno), len);
			left--;
			continue;
		}
		if (connect(mc[i].fd, (struct sockaddr *)&ss, sl) == 0)
			continue;
		if (errno == EINPROGRESS) {
			mc[i].connecting = true;
		} else {
			mc_finish(st, &mc[i], i, &st->connect_failed, strerror(errno), len);
			left--;
		}
	}
	while (left > 0 && remaining(deadline) > 0) {
		int np = 0;

		for (int i = 0; i < n; i++) {
			if (mc[i].over)
				continue;
			pfd[np].fd = mc[i].fd;
			pfd[np].events = POLLIN;
			if (mc[i].connecting || mc[i].sent < limit)
				pfd[np].events |= POLLOUT;
			pfd[np].revents = 0;
			idx[np++] = i;
		}
		if (poll(pfd, (nfds_t)np, 100) < 0 && errno != EINTR)
			break;
		for (int j = 0; j < np; j++) {
			struct mconn *m = &mc[idx[j]];
			int i = idx[j];

			if (!pfd[j].revents)
				continue;
			if (m->connecting) {
				int err = 0;
				socklen_t el = sizeof(err);

				getsockopt(m->fd, SOL_SOCKET, SO_ERROR, &err, &el);
				if (err) {
					mc_finish(st, m, i, &st->connect_failed, strerror(err), len);
					left--;
					continue;
				}
				m->connecting = false;
			}
			for (int r = 0; r < 4 && !m->over; r++) {
				ssize_t k = recv(m->fd, buf, 16384, 0);

				if (k > 0) {
					check_feed(&m->c, buf, (size_t)k);
					continue;
				}
				if (k == 0) {
					if (m->c.bad_at >= 0)
						mc_finish(st, m, i, &st->corrupt, "corrupt data", len);
					else if (m->c.len != len || m->sent != len)
						mc_finish(st, m, i, &st->short_eof, "early EOF", len);
					else
						mc_finish(st, m, i, &st->ok, "ok", len);
					left--;
				} else if (errno != EAGAIN && errno != EINTR) {
					mc_finish(st, m, i, &st->reset, strerror(errno), len);
					left--;
				}
				break;
			}
			if (m->over || m->sent >= limit)
				continue;
			size_t k = limit - m->sent < 16384 ? (size_t)(limit - m->sent) : 16384;
			ssize_t w;

			fill_random(buf, k, m->c.seed, m->sent);
			w = send(m->fd, buf, k, MSG_NOSIGNAL);
			if (w > 0) {
				m->sent += (uint64_t)w;
				if (m->sent == len && !m->shut) {
					shutdown(m->fd, SHUT_WR);
					m->shut = true;
				}
			} else if (w < 0 && errno != EAGAIN && errno != EINTR) {
				mc_finish(st, m, i, &st->reset, strerror(errno), len);
				left--;
			}
		}
		if (limit != len) {
			int warmed = 0, gone = 0;

			for (int i = 0; i < n; i++) {
				warmed += !mc[i].over && mc[i].c.len >= warm;
				gone += mc[i].over;
			}
			if (warmed + gone == n) {
				st->warm_ok = warmed;
				limit = len;
			}
		}
	}
	for (int i = 0; i < n; i++) {
		if (!mc[i].over)
			mc_finish(st, &mc[i], i, &st->timeout, "timeout", len);
	}
	st->ms = now_ms() - start;
	free(mc);
	free(pfd);
	free(idx);
	free(buf);
}

/* ---- config files --------------------------------------------------------------- */

static char conf_dir[64];

void conf_dir_make(char *dir, size_t len)
{
	snprintf(dir, len, "/tmp/uproxy-conf-XXXXXX");
	cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	snprintf(conf_dir, sizeof(conf_dir), "%s", dir);
}

/* Every file a test left there goes (config files, access logs, unix sockets): the
 * directory is private to the test, so nothing else can be in it. */
void conf_dir_remove(void)
{
	DIR *d;
	struct dirent *e;
	char p[384];

	if (!conf_dir[0])
		return;
	d = opendir(conf_dir);
	if (d != NULL) {
		while ((e = readdir(d)) != NULL) {
			if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
				continue;
			snprintf(p, sizeof(p), "%s/%s", conf_dir, e->d_name);
			unlink(p);
		}
		closedir(d);
	}
	rmdir(conf_dir);
	conf_dir[0] = '\0';
}

void file_write_atomic(const char *path, const char *fmt, ...)
{
	char tmp[256];
	va_list ap;
	FILE *f;

	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	f = fopen(tmp, "we");
	cr_assert_not_null(f, "cannot write %s: %s", tmp, strerror(errno));
	va_start(ap, fmt);
	vfprintf(f, fmt, ap);
	va_end(ap);
	cr_assert_eq(fclose(f), 0);
	cr_assert_eq(rename(tmp, path), 0, "rename %s: %s", tmp, strerror(errno));
}

const char *bytes_show(const void *p, size_t n)
{
	static char out[4][2048];
	static int k;
	char *o = out[k++ % 4];
	const unsigned char *b = p;
	size_t j = 0;

	for (size_t i = 0; i < n && j + 5 < sizeof(out[0]); i++) {
		if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '\\')
			o[j++] = (char)b[i];
		else
			j += (size_t)snprintf(o + j, sizeof(out[0]) - j, "\\x%02x", b[i]);
	}
	o[j] = '\0';
	return o;
}

bool text_names_line(const char *text, const char *path, int line)
{
	char want[192];
	size_t n;

	n = (size_t)snprintf(want, sizeof(want), "%s:%d", path, line);
	for (const char *p = strstr(text, want); p; p = strstr(p + 1, want))
		if (p[n] < '0' || p[n] > '9')
			return true;
	return false;
}

int text_line_of(const char *text, const char *needle)
{
	const char *hit = strstr(text, needle);
	int line = 1;

	cr_assert_not_null(hit, "'%s' is not in the text:\n%s", needle, text);
	for (const char *c = text; c < hit; c++)
		line += *c == '\n';
	return line;
}

/* ---- a proxy started from its own arguments ------------------------------------ */

bool proxy_spawn_ports(struct proxy *px, const char *const args[], const uint16_t ports[], int n)
{
	char *argv[48], st[64];
	size_t k = 0;
	bool ready = false;

	memset(px, 0, sizeof(*px));
	px->port = ports[0];
	px->family = AF_INET;
	argv[k++] = (char *)uproxy_bin();
	for (size_t i = 0; args[i] && k < 47; i++)
		argv[k++] = (char *)args[i];
	argv[k] = NULL;
	cr_assert_eq(proc_spawn(&px->proc, argv, 0, 0), 0, "cannot spawn %s", argv[0]);
	for (int i = 0; i < 150 && !ready; i++) {
		if (proc_wait(&px->proc, 0))
			break;
		ready = true;
		for (int j = 0; j < n && ready; j++)
			ready = tcp4_listening(ports[j]);
		if (!ready)
			sleep_ms(20);
	}
	if (!ready) {
		char *err;

		if (!px->proc.reaped)
			proc_kill(&px->proc);
		if (WIFEXITED(px->proc.status) && WEXITSTATUS(px->proc.status) == 1) {
			proc_release(&px->proc);
			return false;
		}
		err = proc_stderr(&px->proc);
		cr_assert_fail("uproxy not listening on all of its %d port(s) (first %u) within "
			       "3 s (%s); stderr:\n%s", n, ports[0],
			       status_str(&px->proc, st, sizeof(st)), err);
	}
	take_baselines(px);
	return true;
}

void proxy_spawn_listen(struct proxy *px, const char *host, uint16_t up_port,
			const char *const args[], proxy_conf_fn *conf, void *arg)
{
	char listen[64];
	const char *argv[46];

	for (int attempt = 0; attempt < 3; attempt++) {
		uint16_t port = free_port();
		size_t n = 0;

		if (host != NULL) {
			snprintf(listen, sizeof(listen), "%s:%u", host, port);
			argv[n++] = "--listen";
			argv[n++] = listen;
		} else {
			conf(port, arg);
		}
		for (size_t i = 0; args[i] != NULL; i++) {
			cr_assert_lt(n, 45, "too many arguments for uproxy");
			argv[n++] = args[i];
		}
		argv[n] = NULL;
		if (proxy_spawn_ports(px, argv, &port, 1)) {
			px->up_port = up_port;
			return;
		}
	}
	cr_assert_fail("uproxy found its listen port taken 3 times running");
}

/* ---- a listener that never answers ----------------------------------------- */

void blackhole_open(struct blackhole *h)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	socklen_t al = sizeof(a);
	int fd;

	h->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	cr_assert_geq(h->lfd, 0);
	cr_assert_eq(bind(h->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
	cr_assert_eq(getsockname(h->lfd, (struct sockaddr *)&a, &al), 0);
	h->port = ntohs(a.sin_port);
	cr_assert_eq(listen(h->lfd, 0), 0);
	for (int i = 0; i < BLACKHOLE_FILL; i++) {
		h->fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		cr_assert_geq(h->fill[i], 0);
		if (connect(h->fill[i], (struct sockaddr *)&a, sizeof(a)) < 0)
			cr_assert_eq(errno, EINPROGRESS, "filling the accept queue: %s",
				     strerror(errno));
	}
	sleep_ms(50);
	/* the set-up must hold: a plain connect to it times out */
	fd = tcp_connect(AF_INET, h->port, 500);
	if (fd >= 0)
		close(fd);
	cr_assert_lt(fd, 0, "a connect to the full listener succeeded: no black hole here");
	cr_assert_eq(errno, ETIMEDOUT, "a connect to the full listener failed with '%s', want a "
		     "timeout", strerror(errno));
}

void blackhole_close(struct blackhole *h)
{
	for (int i = 0; i < BLACKHOLE_FILL; i++)
		close(h->fill[i]);
	close(h->lfd);
}

/* ---- the /metrics endpoint --------------------------------------------------- */

void http_free(struct http_resp *r)
{
	free(r->raw);
	memset(r, 0, sizeof(*r));
}

bool http_req(uint16_t port, const char *req, int timeout_ms, struct http_resp *r, char *why,
	      size_t wlen)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	size_t cap = 1 << 20;
	int fd = tcp_connect(AF_INET, port, timeout_ms);
	char *hdr_end;

	memset(r, 0, sizeof(*r));
	if (fd < 0) {
		snprintf(why, wlen, "connect to 127.0.0.1:%u: %s", port, strerror(errno));
		return false;
	}
	/* may fail when the endpoint closes at once (too many scrapes): reported below */
	io_write_all(fd, req, strlen(req), timeout_ms, NULL);
	r->raw = malloc(cap + 1);
	cr_assert_not_null(r->raw);
	for (;;) {
		ssize_t k = recv(fd, r->raw + r->len, cap - r->len, 0);

		if (k > 0) {
			r->len += (size_t)k;
			cr_assert_lt(r->len, cap, "a response of more than 1 MiB");
			continue;
		}
		if (k == 0)
			break;
		if (errno == EAGAIN || errno == EINTR) {
			struct pollfd p = { .fd = fd, .events = POLLIN };
			uint64_t now = now_ms();

			if (now >= deadline) {
				snprintf(why, wlen, "no EOF within %d ms (%zu bytes read)",
					 timeout_ms, r->len);
				goto fail;
			}
			poll(&p, 1, (int)(deadline - now));
			continue;
		}
		if (r->len == 0) {
			snprintf(why, wlen, "closed without an answer: %s", strerror(errno));
			goto fail;
		}
		break;
	}
	close(fd);
	fd = -1;
	r->raw[r->len] = '\0';
	if (r->len == 0) {
		snprintf(why, wlen, "closed without an answer");
		goto fail;
	}
	cr_assert_eq(sscanf(r->raw, "HTTP/1.1 %d ", &r->status), 1, "bad status line in '%.80s'",
		     r->raw);
	hdr_end = strstr(r->raw, "\r\n\r\n");
	cr_assert_not_null(hdr_end, "no end of head in '%.200s'", r->raw);
	r->body = hdr_end + 4;
	r->body_len = r->len - (size_t)(r->body - r->raw);
	{
		const char *cl = strcasestr(r->raw, "\r\nContent-Length: ");
		unsigned long long n;

		cr_assert(cl && cl < hdr_end, "no Content-Length in '%.200s'", r->raw);
		cr_assert_eq(sscanf(cl + 18, "%llu", &n), 1);
		cr_assert_eq(n, r->body_len, "Content-Length %llu, body %zu bytes", n, r->body_len);
	}
	return true;
fail:
	if (fd >= 0)
		close(fd);
	free(r->raw);
	r->raw = NULL;
	return false;
}

void metrics_parse(const char *body, struct mset *m)
{
	const char *p = body;

	m->n = 0;
	while (*p) {
		const char *nl = strchr(p, '\n');
		char line[512], *sp, *end;
		size_t len;

		cr_assert_not_null(nl, "metrics body does not end with a newline");
		len = (size_t)(nl - p);
		cr_assert_lt(len, sizeof(line));
		memcpy(line, p, len);
		line[len] = '\0';
		p = nl + 1;
		if (line[0] == '#')
			continue;
		sp = strrchr(line, ' ');
		cr_assert_not_null(sp, "sample without a value: '%s'", line);
		*sp = '\0';
		cr_assert_lt(m->n, MSET_MAX);
		cr_assert_lt(strlen(line), sizeof(m->s[0].key));
		strcpy(m->s[m->n].key, line);
		m->s[m->n].v = strtod(sp + 1, &end);
		cr_assert(*end == '\0' && end != sp + 1, "%s has value '%s'", line, sp + 1);
		m->n++;
	}
}

void metrics_wait(uint16_t port, const char *key, double want, int timeout_ms, const char *what)
{
	static struct mset m;
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	double v = -1;
	bool have;

	for (;;) {
		metrics_scrape(port, &m);
		have = metrics_get(&m, key, &v);
		if ((have && v == want) || now_ms() >= deadline)
			break;
		sleep_ms(20);
	}
	cr_assert(have, "%s%s/metrics has no %s", what ? what : "", what ? ": " : "", key);
	cr_assert_eq(v, want, "%s%s%s is %g after %d ms, want %g", what ? what : "",
		     what ? ": " : "", key, v, timeout_ms, want);
}

bool metrics_get(const struct mset *m, const char *key, double *v)
{
	for (int i = 0; i < m->n; i++) {
		if (strcmp(m->s[i].key, key) == 0) {
			*v = m->s[i].v;
			return true;
		}
	}
	return false;
}

double metrics_val(const struct mset *m, const char *key)
{
	double v = 0;

	cr_assert(metrics_get(m, key, &v), "no sample '%s' in the scrape", key);
	return v;
}

double metrics_delta(const struct mset *a, const struct mset *b, const char *key)
{
	return metrics_val(b, key) - metrics_val(a, key);
}

/* true if the label list in braces (without them) holds label as a whole entry. */
static bool has_label(const char *list, size_t len, const char *label)
{
	size_t ll = strlen(label);

	for (size_t i = 0; i + ll <= len; i++) {
		if ((i == 0 || list[i - 1] == ',') && memcmp(list + i, label, ll) == 0 &&
		    (i + ll == len || list[i + ll] == ','))
			return true;
	}
	return false;
}

int metrics_sum(const struct mset *m, const char *name, const char *const labels[],
		double *sum)
{
	size_t nl = strlen(name);
	int hits = 0;

	*sum = 0;
	for (int i = 0; i < m->n; i++) {
		const char *k = m->s[i].key, *list = k + nl;
		size_t len = 0;
		bool all = true;

		if (strncmp(k, name, nl) != 0 || (list[0] != '\0' && list[0] != '{'))
			continue;
		if (list[0] == '{') {
			list++;
			len = strlen(list);
			cr_assert(len > 0 && list[len - 1] == '}', "bad sample key '%s'", k);
			len--;
		}
		for (size_t j = 0; labels != NULL && labels[j] != NULL && all; j++)
			all = has_label(list, len, labels[j]);
		if (all) {
			*sum += m->s[i].v;
			hits++;
		}
	}
	return hits;
}

void metrics_scrape(uint16_t port, struct mset *m)
{
	struct http_resp r;
	char why[160];

	cr_assert(http_req(port, METRICS_REQ, 3000, &r, why, sizeof(why)), "scrape: %s", why);
	cr_assert_eq(r.status, 200, "scrape answered %d: '%.200s'", r.status, r.raw);
	cr_assert_not_null(strstr(r.raw, "\r\nContent-Type: text/plain; version=0.0.4"),
			   "scrape without the 0.0.4 content type: '%.300s'", r.raw);
	metrics_parse(r.body, m);
	http_free(&r);
}

/* ---- access-log files -------------------------------------------------------- */

char alog_dir[64];
char alog_path[128];

void alog_make(void)
{
	snprintf(alog_dir, sizeof(alog_dir), "/tmp/uproxy-alog-XXXXXX");
	cr_assert_not_null(mkdtemp(alog_dir), "mkdtemp: %s", strerror(errno));
	snprintf(alog_path, sizeof(alog_path), "%s/access.log", alog_dir);
}

void alog_remove(void)
{
	if (!alog_dir[0])
		return;
	unlink(alog_path);
	rmdir(alog_dir);
	alog_dir[0] = '\0';
}

char *file_read_all(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t cap = 1 << 20;
	char *s = malloc(cap + 1);
	size_t n = 0;

	cr_assert_not_null(s);
	if (fd >= 0) {
		ssize_t k;

		while ((k = read(fd, s + n, cap - n)) > 0)
			n += (size_t)k;
		close(fd);
	}
	s[n] = '\0';
	if (len)
		*len = n;
	return s;
}

int count_lines(const char *s)
{
	int n = 0;

	for (; *s; s++)
		n += *s == '\n';
	return n;
}

char *alog_wait_lines(const char *path, size_t off, int want, int timeout_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;

	for (;;) {
		size_t len;
		char *s = file_read_all(path, &len);
		char *tail = strdup(off <= len ? s + off : "");

		free(s);
		cr_assert_not_null(tail);
		if (count_lines(tail) >= want || now_ms() >= deadline)
			return tail;
		free(tail);
		sleep_ms(10);
	}
}

/* The start of the first whole line of text holding needle, or NULL; *end gets its newline. */
static const char *line_with(const char *text, const char *needle, const char **end)
{
	const char *hit = strstr(text, needle), *nl = hit ? strchr(hit, '\n') : NULL;

	if (!nl)
		return NULL;
	while (hit > text && hit[-1] != '\n')
		hit--;
	*end = nl;
	return hit;
}

static void copy_line(const char *from, const char *to, char *out, size_t len)
{
	cr_assert_lt((size_t)(to - from), len);
	memcpy(out, from, (size_t)(to - from));
	out[to - from] = '\0';
}

void alog_find_line(const char *tail, const char *needle, char *out, size_t len)
{
	const char *hit = NULL, *end = NULL, *p = tail;
	int n = 0;

	while ((p = strstr(p, needle)) != NULL) {
		n++;
		p += strlen(needle);
	}
	cr_assert_eq(n, 1, "%d lines for %s in:\n%s", n, needle, tail);
	hit = line_with(tail, needle, &end);
	cr_assert_not_null(hit);
	copy_line(hit, end, out, len);
}

void alog_wait_client(uint16_t client_port, int timeout_ms, char *out, size_t len)
{
	char needle[48];

	snprintf(needle, sizeof(needle), " client=127.0.0.1:%u ", client_port);
	alog_wait_line(needle, timeout_ms, out, len);
}

void alog_wait_line(const char *needle, int timeout_ms, char *out, size_t len)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	char *s;

	for (;;) {
		const char *end, *hit;

		s = file_read_all(alog_path, NULL);
		hit = line_with(s, needle, &end);
		if (hit) {
			copy_line(hit, end, out, len);
			free(s);
			return;
		}
		if (now_ms() >= deadline)
			break;
		free(s);
		sleep_ms(20);
	}
	cr_assert_fail("no access-log line with '%s' within %d ms; the log holds:\n%s", needle,
		       timeout_ms, s);
}

/* ---- criterion glue -------------------------------------------------------- */

/* Meson runs each test alone with --filter: a filter that matches nothing must
 * fail rather than pass, and a test that skipped itself reports 77 (SKIP). The
 * names come from tests/list_tests.py reading the sources, so a miss means that
 * reading disagrees with what criterion registered (a Test( under #if 0, in a
 * comment, or built by a macro): kept so such a test fails instead of passing. */
static int tests_started;

ReportHook(PRE_INIT)(struct criterion_test *t)
{
	(void)t;
	tests_started++;
}

ReportHook(POST_ALL)(struct criterion_global_stats *st)
{
	if (!tests_started) {
		fprintf(stderr, "no test matched the filter: tests/list_tests.py misread a Test()\n");
		fflush(NULL);
		_exit(1);
	}
	if (!st->tests_passed && !st->tests_failed && !st->tests_crashed) {
		fflush(NULL);
		_exit(77);
	}
}
