/* Session timers through the real binary: --idle-timeout closes a silent
 * session (and traffic either way pushes it on), --fin-timeout closes a
 * half-closed session whose other side never finishes, in either direction;
 * each time the proxy must give back every fd and socket. */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int connect_or_fail(const struct proxy *px)
{
	int fd = tcp_connect(AF_INET, px->port, 2000);

	cr_assert_geq(fd, 0, "connect to the proxy on port %u: %s", px->port, strerror(errno));
	return fd;
}

Test(timeouts, idle_timeout, .timeout = 30)
{
	static const char *const extra[] = { "--idle-timeout", "500", NULL };
	struct backend b;
	struct proxy px;
	uint64_t t0, ms, extra_bytes = 0, last;
	enum io_end e;
	int fd;

	setup_echo(&b, &px, extra);

	/* a silent client: closed by the proxy after ~500 ms */
	for (int i = 0; i < 2; i++) {
		fd = connect_or_fail(&px);
		t0 = now_ms();
		e = io_wait_close(fd, 5000, &extra_bytes);
		ms = now_ms() - t0;
		cr_assert(e == IO_EOF || e == IO_RESET, "--idle-timeout 500: a silent client saw %s "
			  "after %llu ms, want EOF or reset", io_end_name(e),
			  (unsigned long long)ms);
		cr_assert(ms >= 400 && ms <= 1500, "--idle-timeout 500: a silent client was closed "
			  "after %llu ms, want 400-1500 ms", (unsigned long long)ms);
		cr_assert_eq(extra_bytes, 0);
		close(fd);
		assert_proxy_idle(&px, 1000, "after the idle timeout");
	}

	/* a client sending a byte every 200 ms for 2 s: never idle for 500 ms */
	fd = connect_or_fail(&px);
	t0 = now_ms();
	last = t0;
	for (int i = 0; now_ms() - t0 < 2000; i++) {
		cr_assert(echo_roundtrip(fd, 0x1d1e + (uint64_t)i, 1, 1000), "byte %d (%llu ms in): "
			  "echo failed; the session was closed although it was never idle for 500 "
			  "ms", i, (unsigned long long)(now_ms() - t0));
		last = now_ms();
		sleep_ms(200);
	}
	cr_assert(echo_roundtrip(fd, 0x1d1f, 1, 1000), "after 2 s of a byte every 200 ms the "
		  "session no longer echoes");
	last = now_ms();
	/* then silence: closed again after ~500 ms */
	e = io_wait_close(fd, 5000, &extra_bytes);
	ms = now_ms() - last;
	cr_assert(e == IO_EOF || e == IO_RESET, "silent after traffic: %s, want EOF or reset",
		  io_end_name(e));
	cr_assert(ms >= 400 && ms <= 1500, "silent after traffic: closed after %llu ms, want "
		  "400-1500 ms", (unsigned long long)ms);
	close(fd);
	assert_proxy_idle(&px, 1000, "after the idle timeout");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

/* An upstream that never sends and never closes (it may shut down its write
 * side first), until told to stop; records when it saw EOF. */
struct holder {
	bool shut_first;
	atomic_bool stop;
	atomic_bool got_eof;
	atomic_bool accepted;
	uint64_t eof_at;
	atomic_bool done;
};

static void upstream_holds(int fd, void *arg)
{
	struct holder *h = arg;
	uint64_t deadline = now_ms() + 15000;
	uint8_t buf[4096];

	atomic_store(&h->accepted, true);
	if (h->shut_first)
		shutdown(fd, SHUT_WR);
	while (!atomic_load(&h->stop) && now_ms() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = atomic_load(&h->got_eof) ? 0 : POLLIN };

		if (poll(&pfd, 1, 50) <= 0 || atomic_load(&h->got_eof))
			continue;
		ssize_t k = recv(fd, buf, sizeof(buf), 0);

		if (k == 0) {
			h->eof_at = now_ms();
			atomic_store(&h->got_eof, true);
		} else if (k < 0 && errno != EAGAIN && errno != EINTR) {
			break;
		}
	}
	close(fd);
	atomic_store(&h->done, true);
}

static void start_holder(struct backend *b, struct proxy *px, struct holder *h)
{
	static const char *const extra[] = { "--fin-timeout", "500", "--idle-timeout", "60000",
					     NULL };
	struct proxy_cfg cfg = { 0 };

	backend_bind(b, AF_INET);
	cfg.up_port = b->port;
	for (int i = 0; extra[i]; i++)
		cfg.extra[i] = extra[i];
	proxy_start(px, &cfg);
	b->handler = upstream_holds;
	b->arg = h;
	backend_run(b, BK_HANDLER);
}

Test(timeouts, fin_timeout_client_half_closed, .timeout = 30)
{
	static struct holder h = { .shut_first = false };
	struct backend b;
	struct proxy px;
	uint64_t t0, ms, extra_bytes = 0;
	enum io_end e;
	int fd, fds;

	start_holder(&b, &px, &h);
	fd = connect_or_fail(&px);
	for (int i = 0; i < 200 && !atomic_load(&h.accepted); i++)
		sleep_ms(10);
	cr_assert(atomic_load(&h.accepted), "the upstream never got the connection");
	t0 = now_ms();
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);
	/* the client's FIN reaches the upstream, which then does nothing */
	for (int i = 0; i < 100 && !atomic_load(&h.got_eof); i++)
		sleep_ms(5);
	cr_assert(atomic_load(&h.got_eof), "the client's FIN did not reach the upstream");
	fds = proxy_fds(&px);
	cr_assert_eq(fds, px.base_fds + 2, "half-closed, the proxy has %d fds, want its baseline "
		     "%d + 2 for the session", fds, px.base_fds);
	e = io_wait_close(fd, 5000, &extra_bytes);
	ms = now_ms() - t0;
	cr_assert(e == IO_EOF || e == IO_RESET, "--fin-timeout 500: after the client's "
		  "shutdown(SHUT_WR) and an upstream that never finishes, the client saw %s "
		  "after %llu ms, want EOF or reset", io_end_name(e), (unsigned long long)ms);
	cr_assert(ms >= 480 && ms <= 1500, "--fin-timeout 500 (idle 60000): half-closed session "
		  "closed %llu ms after the client's FIN, want 500-1500 ms",
		  (unsigned long long)ms);
	cr_assert_eq(extra_bytes, 0);
	close(fd);
	assert_proxy_idle(&px, 1000, "after the fin timeout");
	atomic_store(&h.stop, true);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(timeouts, fin_timeout_upstream_half_closed, .timeout = 30)
{
	static struct holder h = { .shut_first = true };
	struct backend b;
	struct proxy px;
	uint64_t t0, extra_bytes = 0, ms;
	enum io_end e;
	int fd, fds;

	start_holder(&b, &px, &h);
	fd = connect_or_fail(&px);
	/* the upstream's FIN arrives as EOF; the client then keeps its side open */
	e = io_wait_close(fd, 3000, &extra_bytes);
	t0 = now_ms();
	cr_assert_eq(e, IO_EOF, "the upstream shut down its side: the client saw %s, want EOF",
		     io_end_name(e));
	cr_assert_eq(extra_bytes, 0);
	sleep_ms(300);
	/* (fds, not /proc/net/tcp: a busy machine's table can be read short) */
	fds = proxy_fds(&px);
	cr_assert_eq(fds, px.base_fds + 2, "300 ms into the half-close (fin-timeout 500) the "
		     "proxy has %d fds, want its baseline %d + 2 for the session", fds,
		     px.base_fds);
	while (fds != px.base_fds && now_ms() - t0 < 3000) {
		sleep_ms(5);
		fds = proxy_fds(&px);
	}
	ms = now_ms() - t0;
	cr_assert_eq(fds, px.base_fds, "--fin-timeout 500 (idle 60000): 3 s after the upstream's "
		     "FIN, with the client never finishing, the proxy still has %d fds (baseline "
		     "%d)", fds, px.base_fds);
	cr_assert(ms >= 450 && ms <= 1500, "the half-closed session was closed %llu ms after the "
		  "upstream's FIN, want 500-1500 ms", (unsigned long long)ms);
	assert_proxy_idle(&px, 1000, "after the fin timeout");
	/* the client's side is dead too: a write is answered with a reset */
	uint8_t byte = 1;
	bool reset = false;

	for (int i = 0; i < 20 && !reset; i++) {
		if (send(fd, &byte, 1, MSG_NOSIGNAL) < 0)
			reset = errno == ECONNRESET || errno == EPIPE;
		sleep_ms(20);
	}
	cr_assert(reset, "after the fin timeout the client can still send into the session");
	close(fd);
	atomic_store(&h.stop, true);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}
