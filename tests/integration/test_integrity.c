/* Byte integrity through uproxy: 64 MiB client→upstream, upstream→client and
 * both ways at once through an echo backend, 10,000 small round trips on one
 * connection, and concurrent streams sharing the smallest allowed buffer pool
 * (the provided-buffer ring runs dry: ENOBUFS must be re-armed, not lost). */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define BIG (64 * MIB)

static int connect_or_fail(const struct proxy *px)
{
	int fd = tcp_connect(AF_INET, px->port, 2000);

	cr_assert_geq(fd, 0, "connect to the proxy on port %u: %s", px->port, strerror(errno));
	return fd;
}

static void assert_rx(const struct xfer *x, uint64_t want_len, uint64_t seed, const char *dir)
{
	cr_assert_eq(x->rx.bad_at, -1, "%s: first corrupted byte at offset %lld (of %llu received)",
		     dir, (long long)x->rx.bad_at, (unsigned long long)x->rx.len);
	cr_assert_eq(x->rx.len, want_len, "%s: received %llu bytes, want %llu (receive ended: %s, "
		     "after %llu ms)", dir, (unsigned long long)x->rx.len,
		     (unsigned long long)want_len, io_end_name(x->recv_end),
		     (unsigned long long)x->ms);
	cr_assert_eq(x->rx.hash, stream_hash(seed, want_len), "%s: checksum differs", dir);
}

Test(integrity, echo_64mib_both_ways, .timeout = 55) /* serial */
{
	struct backend b;
	struct proxy px;
	struct xfer x;
	int fd;

	setup_echo(&b, &px, NULL);
	fd = connect_or_fail(&px);
	xfer_run(&x, fd, 0xec40, BIG, true, 0xec40, 45000);
	cr_assert_eq(x.send_end, IO_DONE, "client sent %llu of %llu bytes, then: %s",
		     (unsigned long long)x.sent, (unsigned long long)BIG, io_end_name(x.send_end));
	assert_rx(&x, BIG, 0xec40, "echo");
	cr_assert_eq(x.recv_end, IO_EOF, "after the echo the client saw %s, want EOF",
		     io_end_name(x.recv_end));
	cr_log_info("64 MiB echoed in %llu ms", (unsigned long long)x.ms);
	close(fd);
	assert_proxy_idle(&px, 1000, "after the echo transfer");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(integrity, upstream_to_client_64mib, .timeout = 55) /* serial */
{
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	struct xfer x;
	int fd;

	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	proxy_start(&px, &cfg);
	b.source_seed = 0x50c;
	b.source_len = BIG;
	backend_run(&b, BK_SOURCE);

	fd = connect_or_fail(&px);
	xfer_run(&x, fd, 0, 0, false, 0x50c, 45000);
	assert_rx(&x, BIG, 0x50c, "upstream→client");
	cr_assert_eq(x.recv_end, IO_EOF, "after the data the client saw %s, want EOF",
		     io_end_name(x.recv_end));
	close(fd);
	assert_proxy_idle(&px, 1000, "after the upstream→client transfer");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(integrity, client_to_upstream_64mib, .timeout = 55) /* serial */
{
	struct backend b;
	struct proxy px;
	struct xfer x;
	struct sink_result r;
	int fd;

	setup(&b, &px, BK_SINK, NULL);
	fd = connect_or_fail(&px);
	/* nothing comes back; the sink closes after our EOF, so we see EOF too */
	xfer_run(&x, fd, 0x51c, BIG, true, 0, 45000);
	cr_assert_eq(x.send_end, IO_DONE, "client sent %llu of %llu bytes, then: %s",
		     (unsigned long long)x.sent, (unsigned long long)BIG, io_end_name(x.send_end));
	cr_assert(backend_wait_sink(&b, 10000, &r), "the upstream never saw the client's EOF "
		  "(it received %llu bytes)", (unsigned long long)atomic_load(&b.bytes_in));
	cr_assert_eq(r.len, BIG, "upstream received %llu bytes, want %llu",
		     (unsigned long long)r.len, (unsigned long long)BIG);
	cr_assert_eq(r.hash, stream_hash(0x51c, BIG), "upstream checksum differs from what was sent");
	cr_assert_eq(x.rx.len, 0, "client received %llu unexpected bytes",
		     (unsigned long long)x.rx.len);
	cr_assert_eq(x.recv_end, IO_EOF, "after the sink closed the client saw %s, want EOF",
		     io_end_name(x.recv_end));
	close(fd);
	assert_proxy_idle(&px, 1000, "after the client→upstream transfer");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(integrity, small_roundtrips_10000, .timeout = 55) /* serial */
{
	struct backend b;
	struct proxy px;
	uint8_t req[64], rep[64];
	uint64_t t0;
	int fd, one = 1;

	setup_echo(&b, &px, NULL);
	fd = connect_or_fail(&px);
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	t0 = now_ms();
	for (int i = 0; i < 10000; i++) {
		size_t done = 0;
		enum io_end e;

		fill_random(req, sizeof(req), 0x64, (uint64_t)i * sizeof(req));
		e = io_write_all(fd, req, sizeof(req), 5000, &done);
		cr_assert_eq(e, IO_DONE, "round trip %d: send: %s", i, io_end_name(e));
		e = io_read_exact(fd, rep, sizeof(rep), 5000, &done);
		cr_assert_eq(e, IO_DONE, "round trip %d: reply: %s after %zu of 64 bytes", i,
			     io_end_name(e), done);
		cr_assert_arr_eq(rep, req, sizeof(req), "round trip %d: reply differs from request", i);
		cr_assert_lt(now_ms() - t0, 45000, "only %d round trips in 45 s", i);
	}
	cr_log_info("10000 round trips in %llu ms", (unsigned long long)(now_ms() - t0));
	close(fd);
	assert_proxy_idle(&px, 1000, "after 10000 round trips");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(integrity, tiny_buffer_pool_16_streams, .timeout = 55) /* serial */
{
	static const char *const extra[] = { "--buffers", "64", "--buffer-size", "1024", NULL };
	struct backend b;
	struct proxy px;
	struct multi_stats st;

	setup_echo(&b, &px, extra);
	multi_echo(&st, 16, AF_INET, px.port, 4 * MIB, 0, 0x7000, 45000);
	cr_assert_eq(st.ok, 16, "%d of 16 streams intact (connect failed %d, corrupt %d, early EOF "
		     "%d, reset %d, timeout %d); %s", st.ok, st.connect_failed, st.corrupt,
		     st.short_eof, st.reset, st.timeout, st.first_problem);
	assert_proxy_idle(&px, 1000, "after the tiny-pool streams");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}
