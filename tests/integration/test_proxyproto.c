/* PROXY protocol: --send-proxy v1/v2 (IPv4 and IPv6) byte for byte at a test
 * backend, --accept-proxy with v1 and v2 headers split across reads (the
 * addresses they carry are what is sent on), its strictness (no header, no
 * bytes at all, reason=protocol in the access log), and real peers: nginx
 * with `listen ... proxy_protocol` behind uproxy, HAProxy send-proxy-v2 in
 * front of it. */
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
#include <unistd.h>

/* ---- a backend that records what each connection sends, up to its EOF ---- */

#define CAP_SLOTS 8
#define CAP_BYTES 8192

struct cap_slot {
	char buf[CAP_BYTES];
	size_t len;
	bool eof;
	atomic_bool finished;
};

struct capture {
	pthread_mutex_t mu;
	int n;
	struct cap_slot s[CAP_SLOTS];
};

static void cap_handler(int fd, void *arg)
{
	struct capture *c = arg;
	struct cap_slot *slot;
	uint64_t deadline = now_ms() + 5000;
	int i;

	pthread_mutex_lock(&c->mu);
	i = c->n < CAP_SLOTS ? c->n++ : -1;
	pthread_mutex_unlock(&c->mu);
	if (i < 0) {
		close(fd);
		return;
	}
	slot = &c->s[i];
	while (slot->len < CAP_BYTES && now_ms() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t r;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		r = read(fd, slot->buf + slot->len, CAP_BYTES - slot->len);
		if (r == 0) {
			slot->eof = true;
			break;
		}
		if (r < 0) {
			if (errno == EAGAIN || errno == EINTR)
				continue;
			break;
		}
		slot->len += (size_t)r;
	}
	close(fd);
	atomic_store(&slot->finished, true);
}

static struct capture *capture_new(void)
{
	struct capture *c = calloc(1, sizeof(*c));

	cr_assert_not_null(c);
	pthread_mutex_init(&c->mu, NULL);
	return c;
}

/* The finished connection whose bytes contain marker, within timeout_ms. */
static struct cap_slot *capture_find(struct capture *c, const char *marker, int timeout_ms)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;

	do {
		for (int i = 0; i < CAP_SLOTS; i++) {
			struct cap_slot *s = &c->s[i];

			if (atomic_load(&s->finished) &&
			    memmem(s->buf, s->len, marker, strlen(marker)) != NULL)
				return s;
		}
		sleep_ms(5);
	} while (now_ms() < deadline);
	return NULL;
}

static uint16_t local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);

	cr_assert_eq(getsockname(fd, (struct sockaddr *)&ss, &len), 0, "getsockname: %s",
		     strerror(errno));
	if (ss.ss_family == AF_INET6)
		return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	return ntohs(((struct sockaddr_in *)&ss)->sin_port);
}

static void start_handler_proxy(struct backend *b, struct proxy *px, struct capture *c,
				 const char *const extra[])
{
	struct proxy_cfg cfg = { 0 };

	backend_bind(b, AF_INET);
	cfg.up_port = b->port;
	for (size_t i = 0; extra[i] && i < 11; i++)
		cfg.extra[i] = extra[i];
	proxy_start(px, &cfg);
	b->handler = cap_handler;
	b->arg = c;
	backend_run(b, BK_HANDLER);
}

/* Sends the parts (pausing pause_ms between them), then SHUT_WR, and waits
 * for the proxy to close the client once the backend has closed. */
static void send_parts(int fd, const void *const parts[], const size_t lens[], int nparts,
		       int pause_ms)
{
	int one = 1;

	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	for (int i = 0; i < nparts; i++) {
		size_t done = 0;
		enum io_end e = io_write_all(fd, parts[i], lens[i], 2000, &done);

		cr_assert_eq(e, IO_DONE, "client write %d of %d: %s after %zu of %zu bytes", i + 1,
			     nparts, io_end_name(e), done, lens[i]);
		if (i + 1 < nparts && pause_ms)
			sleep_ms((unsigned int)pause_ms);
	}
	shutdown(fd, SHUT_WR);
}

static void expect_bytes(const struct cap_slot *s, const void *want, size_t wlen,
			 const char *what)
{
	cr_assert_not_null(s, "%s: the backend never got a connection carrying the payload",
			   what);
	cr_assert(s->eof, "%s: the backend connection ended without EOF after %zu bytes: %s", what,
		  s->len, bytes_show(s->buf, s->len));
	cr_assert(s->len == wlen && memcmp(s->buf, want, wlen) == 0,
		  "%s: the backend got %zu bytes:\n  %s\nwant %zu bytes:\n  %s", what, s->len,
		  bytes_show(s->buf, s->len), wlen, bytes_show(want, wlen));
}

static size_t put_v2(uint8_t *h, uint8_t cmd, const char *src, const char *dst, uint16_t sport,
		     uint16_t dport)
{
	static const uint8_t sig[12] = { 0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
					 0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a };

	memcpy(h, sig, 12);
	h[12] = cmd;
	h[13] = 0x11; /* AF_INET, STREAM */
	h[14] = 0;
	h[15] = 12;
	inet_pton(AF_INET, src, h + 16);
	inet_pton(AF_INET, dst, h + 20);
	h[24] = (uint8_t)(sport >> 8);
	h[25] = (uint8_t)sport;
	h[26] = (uint8_t)(dport >> 8);
	h[27] = (uint8_t)dport;
	return 28;
}

static const char PAYLOAD[] = "hello through the proxy, marker-7f3a9c\n";

/* ---- --send-proxy ----------------------------------------------------------- */

Test(proxyproto, send_v1_ipv4, .timeout = 30)
{
	const char *const extra[] = { "--send-proxy", "v1", NULL };
	struct capture *c = capture_new();
	struct backend b;
	struct proxy px;
	char want[512];
	int fd, n;
	uint16_t cport;

	start_handler_proxy(&b, &px, c, extra);
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	cport = local_port(fd);
	send_parts(fd, (const void *const[]){ PAYLOAD }, (size_t[]){ strlen(PAYLOAD) }, 1, 0);
	struct cap_slot *s = capture_find(c, "marker-7f3a9c", 5000);

	n = snprintf(want, sizeof(want), "PROXY TCP4 127.0.0.1 127.0.0.1 %u %u\r\n%s", cport,
		     px.port, PAYLOAD);
	expect_bytes(s, want, (size_t)n, "--send-proxy v1");
	enum io_end e = io_wait_close(fd, 3000, NULL);

	cr_assert(e == IO_EOF, "the client saw %s, want EOF after the backend closed",
		  io_end_name(e));
	close(fd);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
	free(c); /* after backend_stop: its handler threads are done with it */
}

Test(proxyproto, send_v2_ipv4, .timeout = 30)
{
	const char *const extra[] = { "--send-proxy", "v2", NULL };
	struct capture *c = capture_new();
	struct backend b;
	struct proxy px;
	uint8_t want[512];
	size_t n;
	int fd;
	uint16_t cport;

	start_handler_proxy(&b, &px, c, extra);
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	cport = local_port(fd);
	send_parts(fd, (const void *const[]){ PAYLOAD }, (size_t[]){ strlen(PAYLOAD) }, 1, 0);
	struct cap_slot *s = capture_find(c, "marker-7f3a9c", 5000);

	cr_assert_not_null(s, "--send-proxy v2: the backend never got the payload");
	cr_assert_geq(s->len, 16, "--send-proxy v2: only %zu bytes: %s", s->len,
		      bytes_show(s->buf, s->len));
	cr_assert(memcmp(s->buf, "\r\n\r\n\0\r\nQUIT\n", 12) == 0, "v2 signature wrong: %s",
		  bytes_show(s->buf, 12));
	cr_assert_eq((uint8_t)s->buf[12], 0x21, "version/command 0x%02x, want 0x21",
		     (uint8_t)s->buf[12]);
	cr_assert_eq((uint8_t)s->buf[13], 0x11, "family/transport 0x%02x, want 0x11 (TCP4)",
		     (uint8_t)s->buf[13]);
	cr_assert_eq(((uint8_t)s->buf[14] << 8) | (uint8_t)s->buf[15], 12,
		     "address length %d, want 12",
		     ((uint8_t)s->buf[14] << 8) | (uint8_t)s->buf[15]);
	n = put_v2(want, 0x21, "127.0.0.1", "127.0.0.1", cport, px.port);
	memcpy(want + n, PAYLOAD, strlen(PAYLOAD));
	n += strlen(PAYLOAD);
	expect_bytes(s, want, n, "--send-proxy v2 (header then payload)");
	cr_assert_eq(io_wait_close(fd, 3000, NULL), IO_EOF);
	close(fd);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
	free(c); /* after backend_stop: its handler threads are done with it */
}

Test(proxyproto, send_v1_ipv6, .timeout = 30)
{
	struct capture *c = capture_new();
	struct proxy_cfg cfg = { 0 };
	struct backend b;
	struct proxy px;
	char listen[64], want[512];
	int fd, n;
	uint16_t cport;

	if (!have_ipv6())
		cr_skip_test("::1 is not available");
	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	cfg.port = free_port();
	snprintf(listen, sizeof(listen), "[::1]:%u", cfg.port);
	cfg.listen = listen;
	cfg.probe_family = AF_INET6;
	cfg.extra[0] = "--send-proxy";
	cfg.extra[1] = "v1";
	proxy_start(&px, &cfg);
	b.handler = cap_handler;
	b.arg = c;
	backend_run(&b, BK_HANDLER);

	fd = tcp_connect(AF_INET6, px.port, 2000);
	cr_assert_geq(fd, 0, "connect to [::1]:%u: %s", px.port, strerror(errno));
	cport = local_port(fd);
	send_parts(fd, (const void *const[]){ PAYLOAD }, (size_t[]){ strlen(PAYLOAD) }, 1, 0);
	struct cap_slot *s = capture_find(c, "marker-7f3a9c", 5000);

	n = snprintf(want, sizeof(want), "PROXY TCP6 ::1 ::1 %u %u\r\n%s", cport, px.port,
		     PAYLOAD);
	expect_bytes(s, want, (size_t)n, "--send-proxy v1 over IPv6");
	cr_assert_eq(io_wait_close(fd, 3000, NULL), IO_EOF);
	close(fd);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
	free(c); /* after backend_stop: its handler threads are done with it */
}

/* ---- --accept-proxy ----------------------------------------------------- */

/* A header naming 203.0.113.7:4242 -> 127.0.0.1:P (v1 text or v2 binary)
 * then the payload, in three writes 50 ms apart, the first two cuts inside
 * the header: the backend must see the accepted addresses re-sent as v1. */
static void accept_split(bool v2, const char *what)
{
	const char *const extra[] = { "--accept-proxy", "--send-proxy", "v1", NULL };
	struct capture *c = capture_new();
	struct backend b;
	struct proxy px;
	char want[512];
	uint8_t msg[512];
	size_t hlen, mlen, cut1, cut2;
	int fd, n;

	start_handler_proxy(&b, &px, c, extra);
	if (v2)
		hlen = put_v2(msg, 0x21, "203.0.113.7", "127.0.0.1", 4242, px.port);
	else
		hlen = (size_t)snprintf((char *)msg, sizeof(msg),
					"PROXY TCP4 203.0.113.7 127.0.0.1 4242 %u\r\n", px.port);
	memcpy(msg + hlen, PAYLOAD, strlen(PAYLOAD));
	mlen = hlen + strlen(PAYLOAD);
	cut1 = 7;        /* inside the signature / "PROXY T" */
	cut2 = hlen - 5; /* inside the addresses or ports */
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	send_parts(fd, (const void *const[]){ msg, msg + cut1, msg + cut2 },
		   (size_t[]){ cut1, cut2 - cut1, mlen - cut2 }, 3, 50);
	struct cap_slot *s = capture_find(c, "marker-7f3a9c", 5000);

	n = snprintf(want, sizeof(want), "PROXY TCP4 203.0.113.7 127.0.0.1 4242 %u\r\n%s",
		     px.port, PAYLOAD);
	expect_bytes(s, want, (size_t)n, what);
	cr_assert_eq(io_wait_close(fd, 3000, NULL), IO_EOF);
	close(fd);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
	free(c); /* after backend_stop: its handler threads are done with it */
}

Test(proxyproto, accept_v1_split_resent_v1, .timeout = 30)
{
	accept_split(false, "--accept-proxy (v1 header in 3 pieces) --send-proxy v1");
}

Test(proxyproto, accept_v2_split_resent_v1, .timeout = 30)
{
	accept_split(true, "--accept-proxy (v2 header in 3 pieces) --send-proxy v1");
}

/* The access-log line for the client on local port cport, NULL if none. */
static char *log_line_for(const char *path, uint16_t cport)
{
	char key[64], line[1024];
	FILE *f = fopen(path, "r");
	char *found = NULL;

	if (!f)
		return NULL;
	snprintf(key, sizeof(key), "client=127.0.0.1:%u ", cport);
	while (!found && fgets(line, sizeof(line), f))
		if (strstr(line, key))
			found = strdup(line);
	fclose(f);
	return found;
}

Test(proxyproto, accept_strict_no_header_and_silence, .timeout = 30)
{
	char dir[] = "/tmp/uproxy-pp-XXXXXX", path[128];
	const char *extra[] = { "--accept-proxy", "--access-log", path, NULL };
	static const char http[] = "GET / HTTP/1.1\r\nHost: example\r\n\r\n";
	struct backend b;
	struct proxy px;
	uint16_t p_http, p_silent;
	uint64_t t0, ms, extra_bytes = 0;
	enum io_end e;
	int fd;

	cr_assert_not_null(mkdtemp(dir), "mkdtemp: %s", strerror(errno));
	snprintf(path, sizeof(path), "%s/access.log", dir);
	setup(&b, &px, BK_ECHO, extra);

	/* no header, an HTTP request instead: closed within 1 s */
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	p_http = local_port(fd);
	t0 = now_ms();
	io_write_all(fd, http, strlen(http), 1000, NULL);
	e = io_wait_close(fd, 3000, &extra_bytes);
	ms = now_ms() - t0;
	cr_assert(e == IO_EOF || e == IO_RESET, "client without a header: %s, want EOF or reset",
		  io_end_name(e));
	cr_assert_leq(ms, 1000, "client without a header closed after %llu ms, want ≤ 1000",
		      (unsigned long long)ms);
	cr_assert_eq(extra_bytes, 0, "client without a header got %llu bytes back",
		     (unsigned long long)extra_bytes);
	close(fd);

	/* connects and sends nothing: closed at the 3 s header deadline */
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	p_silent = local_port(fd);
	t0 = now_ms();
	e = io_wait_close(fd, 6000, &extra_bytes);
	ms = now_ms() - t0;
	cr_assert(e == IO_EOF || e == IO_RESET, "silent client: %s after %llu ms, want EOF or "
		  "reset", io_end_name(e), (unsigned long long)ms);
	cr_assert(ms >= 2500 && ms <= 4500, "silent client closed after %llu ms, want 2500–4500 "
		  "(3 s header deadline)", (unsigned long long)ms);
	close(fd);

	cr_assert_eq(atomic_load(&b.accepted), 0, "the backend got %d connections, want none",
		     atomic_load(&b.accepted));
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);

	char *l1 = log_line_for(path, p_http), *l2 = log_line_for(path, p_silent);

	cr_assert_not_null(l1, "no access-log line for the client without a header (port %u) "
			   "in %s", p_http, path);
	cr_assert_not_null(l2, "no access-log line for the silent client (port %u)", p_silent);
	cr_assert(strstr(l1, "reason=protocol truncated=none\n") != NULL, "client without a header logged as: %s",
		  l1);
	cr_assert(strstr(l2, "reason=protocol truncated=none\n") != NULL, "silent client logged as: %s", l2);
	free(l1);
	free(l2);
	unlink(path);
	rmdir(dir);
}

/* ---- real peers: nginx behind, HAProxy in front ------------------------- */

/* GET / through the proxy on port; the body of the answer into body. */
static void http_get_body(uint16_t port, uint16_t *cport, char *body, size_t cap)
{
	static const char req[] = "GET / HTTP/1.0\r\nHost: localhost\r\n\r\n";
	char resp[4096];
	size_t len = 0;
	uint64_t deadline = now_ms() + 5000;
	int fd = tcp_connect(AF_INET, port, 2000);

	cr_assert_geq(fd, 0, "connect to the proxy: %s", strerror(errno));
	*cport = local_port(fd);
	cr_assert_eq(io_write_all(fd, req, strlen(req), 2000, NULL), IO_DONE);
	while (len < sizeof(resp) - 1 && now_ms() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t r;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		r = read(fd, resp + len, sizeof(resp) - 1 - len);
		if (r == 0)
			break;
		if (r < 0 && errno != EAGAIN && errno != EINTR)
			break;
		if (r > 0)
			len += (size_t)r;
	}
	close(fd);
	resp[len] = '\0';
	char *p = strstr(resp, "\r\n\r\n");

	cr_assert_not_null(p, "no complete HTTP answer through the proxy (%zu bytes): %s", len,
			   resp);
	cr_assert(strncmp(resp, "HTTP/1.1 200", 12) == 0, "nginx answered: %s", resp);
	snprintf(body, cap, "%s", p + 4);
}

static void nginx_behind(const char *version)
{
	char dir[] = "/tmp/uproxy-ngx-XXXXXX", body[256], want[64], up[64];
	uint16_t nport = free_port(), cport;
	struct nginx_cfg ncfg = { 0 };
	struct proc ng;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };

	make_temp_dir(dir);
	ncfg.dir = dir;
	ncfg.port = nport;
	ncfg.listen_opts = "proxy_protocol";
	ncfg.server_body = "location / { default_type text/plain; "
			   "return 200 \"$proxy_protocol_addr:$proxy_protocol_port\"; }";
	nginx_start(&ng, &ncfg);

	cfg.up_port = nport;
	cfg.extra[0] = "--send-proxy";
	cfg.extra[1] = version;
	snprintf(up, sizeof(up), "127.0.0.1:%u", nport);
	cfg.upstream = up;
	proxy_start(&px, &cfg);
	http_get_body(px.port, &cport, body, sizeof(body));
	snprintf(want, sizeof(want), "127.0.0.1:%u", cport);
	cr_assert_str_eq(body, want, "nginx behind --send-proxy %s saw the client as '%s', want "
			 "'%s'", version, body, want);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	stop_peer(&ng, "nginx");
	remove_tree(dir);
}

Test(proxyproto, nginx_backend_v1, .timeout = 30)
{
	nginx_behind("v1");
}

Test(proxyproto, nginx_backend_v2, .timeout = 30)
{
	nginx_behind("v2");
}

Test(proxyproto, haproxy_in_front, .timeout = 30)
{
	const char *const extra[] = { "--accept-proxy", "--send-proxy", "v1", NULL };
	const char *haproxy = find_prog("haproxy");
	char dir[] = "/tmp/uproxy-hap-XXXXXX", conf[128], text[1024], want[256];
	struct capture *c = capture_new();
	uint16_t hport = free_port(), cport;
	struct backend b;
	struct proxy px;
	struct proc hp;
	int fd, n;

	make_temp_dir(dir);
	start_handler_proxy(&b, &px, c, extra);
	snprintf(conf, sizeof(conf), "%s/haproxy.cfg", dir);
	snprintf(text, sizeof(text),
		 "global\n  maxconn 64\n"
		 "defaults\n  mode tcp\n  timeout connect 2s\n  timeout client 10s\n"
		 "  timeout server 10s\n"
		 "frontend f\n  bind 127.0.0.1:%u\n  default_backend b\n"
		 "backend b\n  server s1 127.0.0.1:%u send-proxy-v2\n",
		 hport, px.port);
	write_file(conf, text);
	char *argv[] = { (char *)haproxy, "-db", "-f", conf, NULL };

	cr_assert_eq(proc_spawn(&hp, argv, 0, 0), 0, "cannot spawn haproxy");
	if (!wait_listening(&hp, hport, 5000)) {
		char st[64], *err = proc_stderr(&hp);

		cr_assert_fail("haproxy not listening on 127.0.0.1:%u within 5 s (%s); stderr:\n%s",
			       hport, status_str(&hp, st, sizeof(st)), err);
	}
	fd = tcp_connect(AF_INET, hport, 2000);
	cr_assert_geq(fd, 0, "connect to haproxy: %s", strerror(errno));
	cport = local_port(fd);
	send_parts(fd, (const void *const[]){ PAYLOAD }, (size_t[]){ strlen(PAYLOAD) }, 1, 0);
	struct cap_slot *s = capture_find(c, "marker-7f3a9c", 5000);

	n = snprintf(want, sizeof(want), "PROXY TCP4 127.0.0.1 127.0.0.1 %u %u\r\n%s", cport, hport,
		     PAYLOAD);
	expect_bytes(s, want, (size_t)n, "HAProxy send-proxy-v2 -> --accept-proxy --send-proxy v1");
	cr_assert_eq(io_wait_close(fd, 3000, NULL), IO_EOF);
	close(fd);
	stop_peer(&hp, "haproxy");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
	free(c); /* after backend_stop: its handler threads are done with it */
	remove_tree(dir);
}
