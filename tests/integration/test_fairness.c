/* Buffer fairness (issue 8): no client can starve another. Thousands of clients that never
 * read must not keep a fresh client from being served fast and byte-exact (real nginx behind
 * the proxy), the proxy's memory stays within the documented bound, and a session that finds
 * the buffer pool pinned still learns of its peer's reset or FIN at once. */
#include "harness.h"
#include "peers.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

/* The documented defaults and the memory bound's terms (README, issue 8). */
#define DEFAULT_BUFFERS 2048
#define DEFAULT_BUFFER_SIZE (16 * KIB)
#define FALLBACK_KIB 4     /* one private fallback buffer per direction */
#define SESSION_KIB 1      /* per-session state */
#define RSS_SLACK_KIB (16 * 1024) /* allocator and the kernel's ring memory */

/* Files nginx serves: contents are streams of harness seeds, so hashes are known. */
#define LARGE_SEED 0xfa11ULL
#define LARGE_LEN (8 * MIB)
#define MEDIUM_SEED 0xfa12ULL
#define MEDIUM_LEN (1 * MIB)
#define SMALL_SEED 0xfa13ULL
#define SMALL_LEN 100

/* A fresh request over an idle loopback path through the proxy takes a few ms; 200 ms leaves a
 * wide margin for 2 cores shared with other work and thousands of open sessions, while a
 * request parked behind a pinned pool never completes at all. */
#define FRESH_CLIENTS 20
#define FRESH_MAX_MS 200
#define FRESH_TIMEOUT_MS 2000

#define MAX_SLOW 3000
/* The slow clients' receive buffer, set before connect so the window starts small, and their
 * MSS: an Ethernet-sized one, as a remote client would have. Loopback's 64 KiB MSS would let
 * the kernel size each of the proxy's client sockets for ~1 MiB of send queue (tcp_sndbuf_expand:
 * 2 x 10 segments), ~3 GiB for 3,000 clients, past the host's tcp_mem limit; with 1460 it is
 * ~90 KiB each. */
#define SLOW_RCVBUF 4096
#define SLOW_MSS 1460

/* Removed in .fini, so a failed assertion leaves no 10 MiB of files in /tmp. */
static char tmp_dir[64];

static void cleanup(void)
{
	if (tmp_dir[0])
		remove_tree(tmp_dir);
	tmp_dir[0] = '\0';
}

static void write_stream_file(const char *path, uint64_t seed, uint64_t len)
{
	static uint8_t buf[64 * KIB];
	FILE *f = fopen(path, "w");

	cr_assert_not_null(f, "cannot write %s: %s", path, strerror(errno));
	for (uint64_t off = 0; off < len;) {
		size_t n = len - off < sizeof(buf) ? (size_t)(len - off) : sizeof(buf);

		fill_random(buf, n, seed, off);
		cr_assert_eq(fwrite(buf, 1, n, f), n, "write %s: %s", path, strerror(errno));
		off += n;
	}
	cr_assert_eq(fclose(f), 0, "write %s: %s", path, strerror(errno));
}

/* nginx on a free port serving /large, /medium and /small from tmp_dir/www. It holds one
 * connection and one open file per slow client, so it gets room for both. Its send buffer is
 * fixed at 8 KiB: autotuned, each of its sockets would queue 4 MiB (tcp_wmem max) of the
 * large file in the kernel, 12 GiB for 3,000 clients. */
static uint16_t start_nginx(struct proc *ng)
{
	char www[128], path[160], body[512];
	struct nginx_cfg cfg = { 0 };

	snprintf(tmp_dir, sizeof(tmp_dir), "/tmp/uproxy-fair-XXXXXX");
	make_temp_dir(tmp_dir);
	snprintf(www, sizeof(www), "%s/www", tmp_dir);
	cr_assert_eq(mkdir(www, 0755), 0, "mkdir %s: %s", www, strerror(errno));
	snprintf(path, sizeof(path), "%s/large", www);
	write_stream_file(path, LARGE_SEED, LARGE_LEN);
	snprintf(path, sizeof(path), "%s/medium", www);
	write_stream_file(path, MEDIUM_SEED, MEDIUM_LEN);
	snprintf(path, sizeof(path), "%s/small", www);
	write_stream_file(path, SMALL_SEED, SMALL_LEN);
	snprintf(body, sizeof(body),
		 "sendfile on;\n    keepalive_timeout 0;\n    default_type application/octet-stream;\n"
		 "    root %s;\n    location / { }", www);
	cfg.dir = tmp_dir;
	cfg.port = free_port();
	cfg.listen_opts = "backlog=4096 sndbuf=8k";
	cfg.server_body = body;
	cfg.worker_connections = 8192;
	cfg.nofile = 16384;
	nginx_start(ng, &cfg);
	return cfg.port;
}

/* ---- one HTTP/1.0 GET, timed, body hashed -------------------------------- */

struct http_res {
	enum io_end end; /* how reading ended: IO_EOF for a complete HTTP/1.0 answer */
	int status;
	uint64_t body_len, body_hash;
	uint64_t ms;     /* connect to EOF */
};

static void http_get(struct http_res *r, uint16_t port, const char *path, int timeout_ms)
{
	char req[128], hdr[4096];
	size_t hlen = 0;
	bool in_body = false;
	uint64_t t0 = now_ms(), deadline = t0 + (uint64_t)timeout_ms;
	static uint8_t buf[64 * KIB];
	int fd;

	memset(r, 0, sizeof(*r));
	r->body_hash = HASH64_INIT;
	r->end = IO_TIMEOUT;
	fd = tcp_connect(AF_INET, port, timeout_ms);
	cr_assert_geq(fd, 0, "connect to the proxy for GET %s: %s", path, strerror(errno));
	snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n", path);
	r->end = io_write_all(fd, req, strlen(req), timeout_ms, NULL);
	if (r->end != IO_DONE)
		goto out;
	r->end = IO_TIMEOUT;
	while (now_ms() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		int left = (int)(deadline - now_ms());
		ssize_t k;

		if (poll(&pfd, 1, left > 0 ? left : 0) <= 0)
			continue;
		k = recv(fd, buf, sizeof(buf), 0);
		if (k == 0) {
			r->end = IO_EOF;
			break;
		}
		if (k < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			r->end = errno == ECONNRESET || errno == EPIPE ? IO_RESET : IO_ERROR;
			break;
		}
		if (in_body) {
			r->body_hash = hash64_update(r->body_hash, buf, (size_t)k);
			r->body_len += (uint64_t)k;
			continue;
		}
		/* still in the header: copy what fits, look for its end */
		size_t take = (size_t)k < sizeof(hdr) - 1 - hlen ? (size_t)k : sizeof(hdr) - 1 - hlen;
		char *end;

		memcpy(hdr + hlen, buf, take);
		hlen += take;
		hdr[hlen] = '\0';
		end = strstr(hdr, "\r\n\r\n");
		if (end == NULL) {
			if (hlen == sizeof(hdr) - 1) {
				r->end = IO_ERROR;
				break;
			}
			continue;
		}
		size_t head = (size_t)(end + 4 - hdr), rest = hlen - head + ((size_t)k - take);
		const uint8_t *body = (size_t)k >= rest ? buf + (size_t)k - rest : NULL;

		cr_assert_not_null(body);
		r->body_hash = hash64_update(r->body_hash, body, rest);
		r->body_len = rest;
		in_body = true;
		if (sscanf(hdr, "HTTP/1.%*d %d", &r->status) != 1)
			r->status = -1;
	}
out:
	r->ms = now_ms() - t0;
	close(fd);
}

/* Asserts a complete, byte-exact 200 answer carrying len bytes of stream seed. */
static void expect_file(const struct http_res *r, const char *what, uint64_t seed, uint64_t len)
{
	cr_assert_eq(r->end, IO_EOF, "%s: no complete answer in %llu ms: %s after %llu body bytes "
		     "(status %d)", what, (unsigned long long)r->ms, io_end_name(r->end),
		     (unsigned long long)r->body_len, r->status);
	cr_assert_eq(r->status, 200, "%s: nginx answered %d", what, r->status);
	cr_assert_eq(r->body_len, len, "%s: body of %llu bytes, want %llu", what,
		     (unsigned long long)r->body_len, (unsigned long long)len);
	cr_assert_eq(r->body_hash, stream_hash(seed, len), "%s: body differs from the file", what);
}

/* ---- memory ------------------------------------------------------------------ */

/* The documented bound on RSS growth over the idle baseline, in KiB: the pools (touched
 * lazily), two fallback buffers and the state of each session, and the slack. */
static uint64_t rss_bound_kib(int workers, uint64_t buffers, uint64_t buffer_size, int conns)
{
	return (uint64_t)workers * buffers * buffer_size / KIB +
	       (uint64_t)conns * (2 * FALLBACK_KIB + SESSION_KIB) + RSS_SLACK_KIB;
}

/* Kernel TCP memory in KiB (/proc/net/sockstat "mem", pages), for the log. */
static long tcp_mem_kib(void)
{
	char line[256];
	long pages = -1;
	FILE *f = fopen("/proc/net/sockstat", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		char *m = strstr(line, " mem ");

		if (strncmp(line, "TCP:", 4) == 0 && m)
			pages = strtol(m + 5, NULL, 10);
	}
	fclose(f);
	return pages < 0 ? -1 : pages * (sysconf(_SC_PAGESIZE) / 1024);
}

static void rss_sample(const struct proxy *px, long *peak)
{
	long kib = rss_kib(px->proc.pid);

	if (kib > *peak)
		*peak = kib;
}

/* ---- the proxy's own counters ------------------------------------------------ */

/* Sum over all label sets of metric name in the proxy's /metrics on sport; -1 if absent. */
static long long metric(uint16_t sport, const char *name)
{
	static const char req[] = "GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n";
	static char page[256 * KIB];
	size_t len = 0, nlen = strlen(name);
	uint64_t deadline = now_ms() + 2000;
	long long sum = -1;
	int fd = tcp_connect(AF_INET, sport, 2000);

	cr_assert_geq(fd, 0, "connect to --stats 127.0.0.1:%u: %s", sport, strerror(errno));
	cr_assert_eq(io_write_all(fd, req, strlen(req), 2000, NULL), IO_DONE);
	while (len < sizeof(page) - 1 && now_ms() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t k;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		k = recv(fd, page + len, sizeof(page) - 1 - len, 0);
		if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR))
			break;
		if (k > 0)
			len += (size_t)k;
	}
	close(fd);
	page[len] = '\0';
	for (char *l = page; l && *l; l = strchr(l, '\n'), l = l ? l + 1 : NULL) {
		char *v;

		if (strncmp(l, name, nlen) != 0 || (l[nlen] != ' ' && l[nlen] != '{'))
			continue;
		v = strchr(l + nlen, ' ');
		if (v)
			sum = (sum < 0 ? 0 : sum) + strtoll(v + 1, NULL, 10);
	}
	return sum;
}

/* Asserts the shared pool ran low at least once (a receive found it empty, or went to a
 * fallback buffer): otherwise the test would not be exercising fairness at all. */
static void assert_pool_ran_low(uint16_t sport, const char *what)
{
	long long empty = metric(sport, "uproxy_buffer_ring_exhausted_total"),
		  fallback = metric(sport, "uproxy_fallback_receives_total");

	cr_log_info("%s: receives that found the pool empty %lld, fallback receives %lld", what,
		    empty, fallback);
	cr_assert(empty > 0 || fallback > 0, "%s: the buffer pool never ran low (%lld receives "
		  "found it empty, %lld used a fallback buffer): the set-up pins nothing", what,
		  empty, fallback);
}

/* ---- clients that never read ---------------------------------------------------- */

/* Connects n clients with a small receive buffer, each sending req and never reading. */
static void open_slow(int *fds, int n, uint16_t port, const char *req)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	struct timeval tv = { .tv_sec = 2 };
	int small = SLOW_RCVBUF, mss = SLOW_MSS;

	for (int i = 0; i < n; i++) {
		int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

		cr_assert_geq(s, 0, "slow client %d: socket: %s", i, strerror(errno));
		setsockopt(s, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
		setsockopt(s, IPPROTO_TCP, TCP_MAXSEG, &mss, sizeof(mss));
		/* bounds the blocking connect and send */
		setsockopt(s, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
		cr_assert_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), 0,
			     "slow client %d of %d: connect: %s", i, n, strerror(errno));
		if (req)
			cr_assert_eq(send(s, req, strlen(req), MSG_NOSIGNAL), (ssize_t)strlen(req),
				     "slow client %d: send: %s", i, strerror(errno));
		fds[i] = s;
	}
}

static void close_all(int *fds, int n)
{
	for (int i = 0; i < n; i++)
		if (fds[i] >= 0)
			close(fds[i]);
}

/* Waits until the proxy holds want sockets for its ports; returns the last count. */
static int wait_socks(const struct proxy *px, int want, int timeout_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	int n;

	while ((n = proxy_sock_count(px->port, px->up_port)) < want && now_ms() < deadline)
		sleep_ms(50);
	return n;
}

/* ---- slow readers in front of nginx ------------------------------------------- */

static int slow_fds[MAX_SLOW];

/* nslow clients GET /large and never read; while they are held, fresh clients must be served
 * quickly and byte-exact and the proxy's RSS must stay within the documented bound. */
static void slow_readers(int nslow, int workers, uint32_t buffers, const char *const extra[])
{
	static const char large_req[] = "GET /large HTTP/1.0\r\nHost: localhost\r\n\r\n";
	struct proxy_cfg cfg = { 0 };
	struct proxy px;
	struct proc ng;
	struct http_res r;
	char up[64], what[96], stats[64];
	uint16_t sport = free_port();
	uint64_t t0, max_ms = 0, bound;
	long peak = 0, last;
	int socks, slowest = -1, n = 0;

	cr_assert_leq(nslow, MAX_SLOW);
	raise_nofile();
	cfg.up_port = start_nginx(&ng);
	snprintf(up, sizeof(up), "127.0.0.1:%u", cfg.up_port);
	cfg.upstream = up;
	snprintf(stats, sizeof(stats), "127.0.0.1:%u", sport);
	cfg.extra[n++] = "--stats";
	cfg.extra[n++] = stats;
	for (int i = 0; extra && extra[i]; i++)
		cfg.extra[n++] = extra[i];
	proxy_start(&px, &cfg);

	t0 = now_ms();
	open_slow(slow_fds, nslow, px.port, large_req);
	socks = wait_socks(&px, 2 * nslow, 15000);
	cr_assert_geq(socks, 2 * nslow, "%d slow clients connected, but after 15 s the proxy "
		      "holds only %d sockets for them (want %d: client and upstream each)", nslow,
		      socks, 2 * nslow);
	cr_log_info("%d slow clients established through the proxy in %llu ms", nslow,
		    (unsigned long long)(now_ms() - t0));

	/* let the proxy fill: at least 2 s, then until its RSS grows < 256 KiB in 1 s (≤ 10 s) */
	last = rss_kib(px.proc.pid);
	sleep_ms(1000);
	for (int i = 0; i < 9; i++) {
		long now;

		sleep_ms(1000);
		now = rss_kib(px.proc.pid);
		if (now - last < 256)
			break;
		last = now;
	}
	rss_sample(&px, &peak);
	cr_log_info("held: proxy RSS %ld KiB (baseline %ld KiB), kernel TCP memory %ld KiB",
		    peak, px.base_rss_kib, tcp_mem_kib());
	snprintf(what, sizeof(what), "%d slow clients held", nslow);
	assert_pool_ran_low(sport, what);

	for (int i = 0; i < FRESH_CLIENTS; i++) {
		snprintf(what, sizeof(what), "fresh client %d of %d, GET /small (%d slow clients "
			 "held)", i + 1, FRESH_CLIENTS, nslow);
		http_get(&r, px.port, "/small", FRESH_TIMEOUT_MS);
		expect_file(&r, what, SMALL_SEED, SMALL_LEN);
		if (r.ms > max_ms) {
			max_ms = r.ms;
			slowest = i + 1;
		}
		rss_sample(&px, &peak);
	}
	cr_log_info("%d fresh GET /small: slowest %llu ms (client %d)", FRESH_CLIENTS,
		    (unsigned long long)max_ms, slowest);
	cr_assert_leq(max_ms, FRESH_MAX_MS, "with %d slow clients held, fresh client %d of %d "
		      "took %llu ms for GET /small, want ≤ %d ms", nslow, slowest, FRESH_CLIENTS,
		      (unsigned long long)max_ms, FRESH_MAX_MS);

	snprintf(what, sizeof(what), "GET /medium (1 MiB) with %d slow clients held", nslow);
	http_get(&r, px.port, "/medium", 15000);
	expect_file(&r, what, MEDIUM_SEED, MEDIUM_LEN);
	cr_log_info("1 MiB download: %llu ms", (unsigned long long)r.ms);
	rss_sample(&px, &peak);

	bound = rss_bound_kib(workers, buffers, DEFAULT_BUFFER_SIZE, nslow + 1);
	cr_log_info("proxy RSS: baseline %ld KiB, peak %ld KiB, growth %ld KiB, bound %llu KiB; "
		    "kernel TCP memory %ld KiB", px.base_rss_kib, peak, peak - px.base_rss_kib,
		    (unsigned long long)bound, tcp_mem_kib());
	/* ASan keeps freed memory in quarantine and adds shadow memory: the bound is a release
	 * figure, checked where the allocator is the real one (as in test_limits.c). */
	if (proxy_is_sanitized(&px))
		cr_log_info("sanitizer build: RSS bound not checked");
	else
		cr_assert_leq((uint64_t)(peak - px.base_rss_kib), bound,
			      "proxy RSS grew by %ld KiB (baseline %ld, peak %ld) with %d slow "
			      "clients; the bound is %d workers x %u buffers x %llu B + %d conns x "
			      "(2 x %d + %d) KiB + %d KiB slack = %llu KiB",
			      peak - px.base_rss_kib, px.base_rss_kib, peak, nslow, workers, buffers,
			      (unsigned long long)DEFAULT_BUFFER_SIZE, nslow + 1, FALLBACK_KIB,
			      SESSION_KIB, RSS_SLACK_KIB, (unsigned long long)bound);

	/* they leave (close with unread data: the proxy gets an RST): all of it is released;
	 * 10 s is ample for a few thousand teardowns */
	close_all(slow_fds, nslow);
	snprintf(what, sizeof(what), "after the %d slow clients closed", nslow);
	assert_proxy_idle(&px, 10000, what);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	stop_peer(&ng, "nginx");
	cleanup();
}

Test(fairness, slow_readers_3000_default, .timeout = 120, .fini = cleanup) /* serial */
{
	slow_readers(3000, 1, DEFAULT_BUFFERS, NULL);
}

Test(fairness, slow_readers_300_buffers_64, .timeout = 120, .fini = cleanup) /* serial */
{
	static const char *const extra[] = { "--buffers", "64", NULL };

	slow_readers(300, 1, 64, extra);
}

Test(fairness, slow_readers_3000_two_workers, .timeout = 120, .fini = cleanup) /* serial */
{
	static const char *const extra[] = { "--workers", "2", NULL };

	slow_readers(3000, 2, DEFAULT_BUFFERS, extra);
}

/* ---- a session that finds the pool pinned still sees its peer go ------------- */

/* The first nslow upstream connections push until the proxy stops reading them and hold on
 * until released; connection nslow is the fresh, idle session's upstream end. */
struct pin {
	int nslow;
	bool close_fresh_side; /* (b): the upstream end closes when told; (a): it waits */
	atomic_int next;
	atomic_int stalled;
	atomic_bool release;
	atomic_bool close_now;
	atomic_int fresh_end;  /* enum io_end the upstream end saw, -1 until then */
	atomic_ullong fresh_end_at;
	atomic_ullong fresh_extra; /* bytes it got, want none */
};

static void push_until_stalled(int fd)
{
	static uint8_t chunk[64 * KIB];
	uint64_t deadline = now_ms() + 10000;
	int small = 16384;

	fill_random(chunk, sizeof(chunk), 0x9a, 0);
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
	while (now_ms() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		ssize_t k = send(fd, chunk, sizeof(chunk), MSG_NOSIGNAL);

		if (k > 0)
			continue;
		if (k < 0 && errno != EAGAIN && errno != EINTR)
			return;
		/* nothing taken for 300 ms: the proxy has stopped reading us */
		if (poll(&pfd, 1, 300) == 0)
			return;
	}
}

static void pin_handler(int fd, void *arg)
{
	struct pin *p = arg;
	int i = atomic_fetch_add(&p->next, 1);

	if (i < p->nslow) {
		push_until_stalled(fd);
		atomic_fetch_add(&p->stalled, 1);
		for (int t = 0; t < 4500 && !atomic_load(&p->release); t++)
			sleep_ms(10);
		close(fd);
		return;
	}
	if (i > p->nslow) {
		close(fd);
		return;
	}
	if (p->close_fresh_side) {
		for (int t = 0; t < 20000 && !atomic_load(&p->close_now); t++)
			sleep_ms(1);
		close(fd);
		return;
	}
	uint64_t deadline = now_ms() + 20000, extra = 0;
	enum io_end e = IO_TIMEOUT;

	while (now_ms() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		uint8_t buf[4096];
		ssize_t k;

		if (poll(&pfd, 1, 5) <= 0)
			continue;
		k = recv(fd, buf, sizeof(buf), 0);
		if (k > 0) {
			extra += (uint64_t)k;
			continue;
		}
		if (k < 0 && (errno == EAGAIN || errno == EINTR))
			continue;
		e = k == 0 ? IO_EOF : errno == ECONNRESET ? IO_RESET : IO_ERROR;
		break;
	}
	atomic_store(&p->fresh_extra, extra);
	atomic_store(&p->fresh_end_at, now_ms());
	atomic_store(&p->fresh_end, (int)e);
	close(fd);
}

/* Is the proxy still holding its accepted socket for the client on cport (inode != 0)? */
static bool proxy_holds(uint16_t listen_port, uint16_t cport)
{
	const char *files[] = { "/proc/net/tcp", "/proc/net/tcp6" };
	char line[512];
	bool held = false;

	for (size_t f = 0; f < 2 && !held; f++) {
		FILE *fp = fopen(files[f], "r");

		if (!fp)
			continue;
		while (!held && fgets(line, sizeof(line), fp)) {
			unsigned int lp, rp, st;
			unsigned long inode;

			if (sscanf(line, "%*d: %*x:%x %*x:%x %x %*s %*s %*s %*u %*u %lu", &lp, &rp,
				   &st, &inode) == 4 && lp == listen_port && rp == cport && inode)
				held = true;
		}
		fclose(fp);
	}
	return held;
}

static uint16_t local_port(int fd)
{
	struct sockaddr_in a;
	socklen_t len = sizeof(a);

	cr_assert_eq(getsockname(fd, (struct sockaddr *)&a, &len), 0, "getsockname: %s",
		     strerror(errno));
	return ntohs(a.sin_port);
}

#define PIN_SLOW 100 /* 100 sessions x ≥ 1 buffer each pin a pool of 64 */

/* --buffers 64 pinned by PIN_SLOW slow readers, then one idle session; its client resets
 * (client_resets) or its upstream closes. The peer's going must be seen within 1 s: the
 * idle timeout (600 s) is the only other thing that would end it. */
static void parked_session(bool client_resets)
{
	static const char *const extra[] = { "--buffers", "64", NULL };
	static struct pin p;
	static int slow[PIN_SLOW];
	struct proxy_cfg cfg = { 0 };
	struct backend b;
	struct proxy px;
	char stats[64];
	uint64_t t0, ms;
	uint16_t cport, sport = free_port();
	int fd, fds_before, fds_with, n = 0;

	memset(&p, 0, sizeof(p));
	p.nslow = PIN_SLOW;
	p.close_fresh_side = !client_resets;
	atomic_store(&p.fresh_end, -1);
	raise_nofile();
	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	snprintf(stats, sizeof(stats), "127.0.0.1:%u", sport);
	cfg.extra[n++] = "--stats";
	cfg.extra[n++] = stats;
	for (int i = 0; extra[i]; i++)
		cfg.extra[n++] = extra[i];
	proxy_start(&px, &cfg);
	b.handler = pin_handler;
	b.arg = &p;
	backend_run(&b, BK_HANDLER);

	open_slow(slow, PIN_SLOW, px.port, NULL);
	for (int i = 0; i < 1500 && atomic_load(&p.stalled) < PIN_SLOW; i++)
		sleep_ms(10);
	cr_assert_eq(atomic_load(&p.stalled), PIN_SLOW, "only %d of %d slow sessions stalled in "
		     "15 s", atomic_load(&p.stalled), PIN_SLOW);
	assert_pool_ran_low(sport, "slow readers stalled");
	fds_before = proxy_fds(&px);

	/* the fresh session: connected both ways, then idle long enough to arm (or park) its
	 * receives */
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "fresh client: connect: %s", strerror(errno));
	cport = local_port(fd);
	for (int i = 0; i < 300 && atomic_load(&b.accepted) < PIN_SLOW + 1; i++)
		sleep_ms(10);
	cr_assert_eq(atomic_load(&b.accepted), PIN_SLOW + 1, "the fresh session never reached "
		     "the upstream (%d connections accepted)", atomic_load(&b.accepted));
	sleep_ms(300);
	fds_with = proxy_fds(&px);

	if (client_resets) {
		t0 = now_ms();
		close_rst(fd);
		for (int i = 0; i < 300 && atomic_load(&p.fresh_end) < 0; i++)
			sleep_ms(10);
		cr_assert_geq(atomic_load(&p.fresh_end), 0, "the fresh session's client reset, but "
			      "its upstream end saw nothing within 3 s (pool pinned by %d slow "
			      "readers, --buffers 64)", PIN_SLOW);
		ms = atomic_load(&p.fresh_end_at) - t0;
		cr_assert(atomic_load(&p.fresh_end) == IO_EOF ||
			  atomic_load(&p.fresh_end) == IO_RESET,
			  "the fresh session's upstream end saw %s, want EOF or reset",
			  io_end_name((enum io_end)atomic_load(&p.fresh_end)));
		cr_assert_leq(ms, 1000, "the fresh session's client reset; its upstream end saw %s "
			      "only %llu ms later, want ≤ 1000 ms",
			      io_end_name((enum io_end)atomic_load(&p.fresh_end)),
			      (unsigned long long)ms);
		cr_assert_eq(atomic_load(&p.fresh_extra), 0, "the idle session's upstream got %llu "
			     "bytes", (unsigned long long)atomic_load(&p.fresh_extra));
		/* and the proxy let go of it: its socket and fds, within the same second */
		while ((proxy_holds(px.port, cport) || proxy_fds(&px) > fds_before) &&
		       now_ms() - t0 < 1000)
			sleep_ms(5);
		cr_assert(!proxy_holds(px.port, cport), "1 s after the client's reset the proxy "
			  "still holds its socket (client port %u)", cport);
		cr_assert_leq(proxy_fds(&px), fds_before, "1 s after the client's reset the proxy "
			      "has %d fds, %d before the session (%d with it)", proxy_fds(&px),
			      fds_before, fds_with);
	} else {
		uint64_t got = 0;
		enum io_end e;

		t0 = now_ms();
		atomic_store(&p.close_now, true);
		e = io_wait_close(fd, 3000, &got);
		ms = now_ms() - t0;
		cr_assert_eq(e, IO_EOF, "the fresh session's upstream closed; within 3 s its client "
			     "saw %s, want EOF (pool pinned by %d slow readers, --buffers 64)",
			     io_end_name(e), PIN_SLOW);
		cr_assert_leq(ms, 1000, "the fresh session's upstream closed; its client saw EOF "
			      "only %llu ms later, want ≤ 1000 ms", (unsigned long long)ms);
		cr_assert_eq(got, 0, "the idle session's client got %llu bytes",
			     (unsigned long long)got);
		close(fd);
	}
	cr_log_info("peer's going seen after %llu ms (fds: %d before the session, %d with it)",
		    (unsigned long long)ms, fds_before, fds_with);

	atomic_store(&p.release, true);
	close_all(slow, PIN_SLOW);
	assert_proxy_idle(&px, 5000, "after the slow readers closed");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(fairness, parked_session_client_reset_closed_within_1s, .timeout = 60) /* serial */
{
	parked_session(true);
}

Test(fairness, parked_session_upstream_close_seen_within_1s, .timeout = 60) /* serial */
{
	parked_session(false);
}
