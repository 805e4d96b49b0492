/* Failures on either side of a session: upstream refused (and back later),
 * upstream closing at once or resetting mid-stream, the client aborting
 * mid-transfer (RST or close) and 2,000 clients aborting at every stage.
 * Each must end the session promptly and give back every fd and socket. */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void start(struct backend *b, struct proxy *px, void (*fn)(int, void *), void *arg)
{
	struct proxy_cfg cfg = { 0 };

	backend_bind(b, AF_INET);
	cfg.up_port = b->port;
	proxy_start(px, &cfg);
	if (fn) {
		b->handler = fn;
		b->arg = arg;
		backend_run(b, BK_HANDLER);
	}
}

static int connect_or_fail(const struct proxy *px)
{
	int fd = tcp_connect(AF_INET, px->port, 2000);

	cr_assert_geq(fd, 0, "connect to the proxy on port %u: %s", px->port, strerror(errno));
	return fd;
}

Test(errors, upstream_refused, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	uint8_t hello[100];

	/* bound but not listening: every connect to it is refused */
	start(&b, &px, NULL, NULL);
	fill_random(hello, sizeof(hello), 1, 0);
	for (int i = 0; i < 20; i++) {
		int fd = connect_or_fail(&px);
		uint64_t t0 = now_ms(), extra = 0, ms;
		enum io_end e;

		/* may fail if the proxy was quicker to close: that is fine */
		io_write_all(fd, hello, sizeof(hello), 1000, NULL);
		e = io_wait_close(fd, 3000, &extra);
		ms = now_ms() - t0;
		cr_assert(e == IO_EOF || e == IO_RESET, "client %d: %s instead of EOF or reset", i,
			  io_end_name(e));
		cr_assert_leq(ms, 1000, "client %d: closed after %llu ms, want ≤ 1000 ms", i,
			      (unsigned long long)ms);
		cr_assert_eq(extra, 0, "client %d: got %llu bytes from nowhere", i,
			     (unsigned long long)extra);
		close(fd);
	}
	assert_proxy_idle(&px, 1000, "after 20 refused upstream connects");

	/* the upstream comes up: the same proxy must now forward */
	backend_run(&b, BK_ECHO);
	int fd = connect_or_fail(&px);

	cr_assert(echo_roundtrip(fd, 0x4ef, 4096, 3000),
		  "after the upstream came back a 4 KiB echo through the proxy failed");
	close(fd);
	assert_proxy_idle(&px, 1000, "after the echo");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

struct closer {
	bool rst;
	uint64_t send_len;
	uint64_t sent;
	uint64_t closed_at;
	atomic_bool done;
};

/* sends send_len bytes, then closes (with an RST if rst) */
static void upstream_closer(int fd, void *arg)
{
	struct closer *c = arg;

	if (c->send_len) {
		io_write_stream(fd, 0xc105e, 0, c->send_len, 5000, &c->sent);
		sleep_ms(100);
	}
	c->closed_at = now_ms();
	if (c->rst)
		close_rst(fd);
	else
		close(fd);
	atomic_store(&c->done, true);
}

Test(errors, upstream_closes_at_once, .timeout = 30)
{
	static struct closer c = { .rst = false, .send_len = 0 };
	struct backend b;
	struct proxy px;
	struct stream_check chk;
	enum io_end e;
	int fd;

	start(&b, &px, upstream_closer, &c);
	fd = connect_or_fail(&px);
	check_init(&chk, 0xc105e);
	e = io_read_stream(fd, &chk, UINT64_MAX, 5000);
	for (int i = 0; i < 100 && !atomic_load(&c.done); i++)
		sleep_ms(10);
	cr_assert(atomic_load(&c.done), "the upstream never got the connection");
	cr_assert_eq(e, IO_EOF, "upstream closed cleanly but the client saw %s, want EOF",
		     io_end_name(e));
	cr_assert_leq(now_ms() - c.closed_at, 1000, "the client saw EOF %llu ms after the upstream "
		      "closed, want ≤ 1000 ms", (unsigned long long)(now_ms() - c.closed_at));
	cr_assert_eq(chk.len, 0);
	close(fd);
	assert_proxy_idle(&px, 1000, "after the upstream closed");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(errors, upstream_reset_midstream, .timeout = 30)
{
	static struct closer c = { .rst = true, .send_len = 256 * KIB };
	struct backend b;
	struct proxy px;
	struct stream_check chk;
	uint64_t end_at;
	enum io_end e;
	int fd;

	start(&b, &px, upstream_closer, &c);
	fd = connect_or_fail(&px);
	check_init(&chk, 0xc105e);
	e = io_read_stream(fd, &chk, UINT64_MAX, 5000);
	end_at = now_ms();
	for (int i = 0; i < 100 && !atomic_load(&c.done); i++)
		sleep_ms(10);
	cr_assert(atomic_load(&c.done), "the upstream never reset (client saw %s after %llu bytes)",
		  io_end_name(e), (unsigned long long)chk.len);
	cr_assert(e == IO_EOF || e == IO_RESET, "after the upstream's RST the client saw %s "
		  "(having read %llu bytes), want EOF or ECONNRESET", io_end_name(e),
		  (unsigned long long)chk.len);
	cr_assert_leq(end_at - c.closed_at, 1000, "client saw the end %llu ms after the upstream "
		      "reset, want ≤ 1000 ms", (unsigned long long)(end_at - c.closed_at));
	cr_assert_eq(chk.bad_at, -1, "data before the reset corrupted at offset %lld",
		     (long long)chk.bad_at);
	cr_assert_leq(chk.len, c.sent, "client got %llu bytes, upstream sent only %llu",
		      (unsigned long long)chk.len, (unsigned long long)c.sent);
	close(fd);
	assert_proxy_idle(&px, 1000, "after the upstream reset");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

/* Streams to the client until the connection is fully closed (a send fails,
 * or poll reports an error or hang-up), for at most 10 s. */
struct streamer {
	uint64_t sent;
	uint64_t closed_at;   /* 0: never saw the close */
	bool saw_eof;
	int err;
	atomic_bool done;
};

static void upstream_streamer(int fd, void *arg)
{
	struct streamer *s = arg;
	uint64_t deadline = now_ms() + 10000;
	uint8_t buf[65536], sink[4096];

	while (now_ms() < deadline && !s->closed_at) {
		struct pollfd pfd = { .fd = fd, .events = POLLOUT | (s->saw_eof ? 0 : POLLIN) };

		if (poll(&pfd, 1, 100) <= 0)
			continue;
		if (pfd.revents & POLLIN) {
			ssize_t k = recv(fd, sink, sizeof(sink), 0);

			if (k == 0)
				s->saw_eof = true;
			else if (k < 0 && errno != EAGAIN)
				s->err = errno;
		}
		if (!s->err && (pfd.revents & POLLOUT)) {
			ssize_t k;

			fill_random(buf, sizeof(buf), 0x57e, s->sent);
			k = send(fd, buf, sizeof(buf), MSG_NOSIGNAL);
			if (k > 0)
				s->sent += (uint64_t)k;
			else if (k < 0 && errno != EAGAIN)
				s->err = errno;
		}
		if (s->err || (pfd.revents & (POLLERR | POLLHUP)))
			s->closed_at = now_ms();
	}
	close(fd);
	atomic_store(&s->done, true);
}

static void client_abort(bool rst)
{
	static struct streamer s;
	struct backend b;
	struct proxy px;
	struct stream_check chk;
	uint64_t abort_at;
	enum io_end e;
	int fd, fds, socks;

	start(&b, &px, upstream_streamer, &s);
	fd = connect_or_fail(&px);
	check_init(&chk, 0x57e);
	e = io_read_stream(fd, &chk, 1 * MIB, 5000);
	cr_assert_eq(e, IO_DONE, "client read %llu of 1 MiB before %s", (unsigned long long)chk.len,
		     io_end_name(e));
	cr_assert_eq(chk.bad_at, -1, "stream corrupted at offset %lld", (long long)chk.bad_at);
	/* the leak check must see this live session: two sockets */
	socks = proxy_sock_count(px.port, px.up_port);
	cr_assert_eq(socks, 2, "mid-transfer the proxy holds %d sockets for its ports, want 2", socks);
	if (rst) {
		abort_at = now_ms();
		close_rst(fd);
	} else {
		uint8_t buf[65536];

		while (recv(fd, buf, sizeof(buf), 0) > 0)
			;
		abort_at = now_ms();
		close(fd);
	}
	bool idle = proxy_wait_idle(&px, 1000, &fds, &socks);

	for (int i = 0; i < 300 && !atomic_load(&s.done); i++)
		sleep_ms(10);
	cr_assert(idle, "1 s after the client's %s the proxy still has %d fds (baseline %d) and "
		  "%d sockets for the session; upstream %s",
		  rst ? "RST" : "close", fds, px.base_fds, socks,
		  s.closed_at ? "saw its connection closed" : "still connected");
	cr_assert_neq(s.closed_at, 0, "the upstream's connection was never closed (it saw %s, "
		      "sent %llu bytes)", s.saw_eof ? "EOF only" : "nothing",
		      (unsigned long long)s.sent);
	cr_assert_leq(s.closed_at - abort_at, 2000, "the upstream saw its connection closed %llu ms "
		      "after the client's %s, want ≤ 2000 ms",
		      (unsigned long long)(s.closed_at - abort_at), rst ? "RST" : "close");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(errors, client_rst_midtransfer, .timeout = 30)
{
	client_abort(true);
}

Test(errors, client_close_midtransfer, .timeout = 30)
{
	client_abort(false);
}

Test(errors, churn_2000_aborted_clients, .timeout = 60) /* serial */
{
	struct backend b;
	struct proxy px;
	uint8_t data[4096];
	uint64_t t0 = now_ms();

	setup_echo(&b, &px, NULL);
	fill_random(data, sizeof(data), 0xc4, 0);
	for (int i = 0; i < 2000; i++) {
		int fd = connect_or_fail(&px);

		/* whatever the socket takes at once; the session is then cut at
		 * a random stage: before, during or after the upstream connect
		 * and the echo */
		if (send(fd, data, sizeof(data), MSG_NOSIGNAL | MSG_DONTWAIT) < 0 && errno != EAGAIN)
			cr_assert_fail("client %d: send: %s", i, strerror(errno));
		switch (i % 4) {
		case 0:
			close_rst(fd);
			break;
		case 1:
			close(fd);
			break;
		case 2:
			shutdown(fd, SHUT_WR);
			close_rst(fd);
			break;
		default:
			sleep_ms(i % 3);
			close_rst(fd);
			break;
		}
		if (i % 200 == 199) {
			fd = connect_or_fail(&px);
			cr_assert(echo_roundtrip(fd, 0xc400 + (uint64_t)i, 4096, 3000),
				  "echo after %d aborted clients failed", i + 1);
			close(fd);
		}
		cr_assert_lt(now_ms() - t0, 45000, "only %d clients in 45 s", i);
	}
	assert_proxy_idle(&px, 2000, "after 2000 aborted clients");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}
