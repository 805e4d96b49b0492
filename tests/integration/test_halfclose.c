/* Half-close through uproxy, both ways: the client shuts down its write side
 * first and then receives a 1 MiB reply, or the upstream shuts down first and
 * then receives the client's 1 MiB. Each side must get every byte, then EOF,
 * and the proxy must end up with no fds or sockets left for the session. */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#define FIRST (256 * KIB)
#define REPLY (1 * MIB)

struct half {
	uint64_t seed_in, seed_out;   /* what the upstream receives / sends */
	uint64_t in_len, out_len;
	struct stream_check got;
	enum io_end rd_end, wr_end;
	uint64_t wrote;
	atomic_bool done;
};

static bool wait_done(struct half *h, int timeout_ms)
{
	for (int i = 0; i < timeout_ms / 5 && !atomic_load(&h->done); i++)
		sleep_ms(5);
	return atomic_load(&h->done);
}

/* (a) read the request to EOF, then send the reply and close */
static void upstream_replies_after_eof(int fd, void *arg)
{
	struct half *h = arg;

	check_init(&h->got, h->seed_in);
	h->rd_end = io_read_stream(fd, &h->got, UINT64_MAX, 15000);
	h->wr_end = IO_ERROR;
	if (h->rd_end == IO_EOF)
		h->wr_end = io_write_stream(fd, h->seed_out, 0, h->out_len, 15000, &h->wrote);
	close(fd);
	atomic_store(&h->done, true);
}

/* (b) send first and shut down, then read the client's data to EOF */
static void upstream_shuts_then_reads(int fd, void *arg)
{
	struct half *h = arg;

	check_init(&h->got, h->seed_in);
	h->wr_end = io_write_stream(fd, h->seed_out, 0, h->out_len, 15000, &h->wrote);
	shutdown(fd, SHUT_WR);
	/* let the client's data pile up in the proxy before reading it */
	sleep_ms(100);
	h->rd_end = io_read_stream(fd, &h->got, UINT64_MAX, 15000);
	close(fd);
	atomic_store(&h->done, true);
}

static void start(struct backend *b, struct proxy *px, void (*fn)(int, void *), struct half *h)
{
	struct proxy_cfg cfg = { 0 };

	backend_bind(b, AF_INET);
	cfg.up_port = b->port;
	proxy_start(px, &cfg);
	b->handler = fn;
	b->arg = h;
	backend_run(b, BK_HANDLER);
}

Test(halfclose, client_shuts_first, .timeout = 40)
{
	static struct half h = { .seed_in = 0xa1, .seed_out = 0xa2, .in_len = FIRST,
				 .out_len = REPLY };
	struct backend b;
	struct proxy px;
	struct stream_check c;
	uint64_t sent = 0;
	enum io_end e;
	int fd;

	start(&b, &px, upstream_replies_after_eof, &h);
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect: %s", strerror(errno));

	e = io_write_stream(fd, h.seed_in, 0, h.in_len, 10000, &sent);
	cr_assert_eq(e, IO_DONE, "client sent %llu of %llu bytes: %s", (unsigned long long)sent,
		     (unsigned long long)h.in_len, io_end_name(e));
	cr_assert_eq(shutdown(fd, SHUT_WR), 0);

	check_init(&c, h.seed_out);
	e = io_read_stream(fd, &c, UINT64_MAX, 15000);
	cr_assert(wait_done(&h, 5000), "upstream handler did not finish");
	cr_assert_eq(h.rd_end, IO_EOF, "upstream saw %s instead of the client's EOF, after %llu "
		     "bytes", io_end_name(h.rd_end), (unsigned long long)h.got.len);
	cr_assert_eq(h.got.len, h.in_len, "upstream got %llu request bytes, want %llu",
		     (unsigned long long)h.got.len, (unsigned long long)h.in_len);
	cr_assert_eq(h.got.bad_at, -1, "request corrupted at offset %lld", (long long)h.got.bad_at);
	cr_assert_eq(h.wr_end, IO_DONE, "upstream could send only %llu of the %llu reply bytes: %s",
		     (unsigned long long)h.wrote, (unsigned long long)h.out_len,
		     io_end_name(h.wr_end));
	cr_assert_eq(c.len, h.out_len, "client got %llu reply bytes, want %llu (then %s)",
		     (unsigned long long)c.len, (unsigned long long)h.out_len, io_end_name(e));
	cr_assert_eq(c.bad_at, -1, "reply corrupted at offset %lld", (long long)c.bad_at);
	cr_assert_eq(e, IO_EOF, "after the reply the client saw %s, want EOF", io_end_name(e));
	close(fd);
	assert_proxy_idle(&px, 1000, "after the half-closed session");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(halfclose, upstream_shuts_first, .timeout = 40)
{
	static struct half h = { .seed_in = 0xb1, .seed_out = 0xb2, .in_len = REPLY,
				 .out_len = FIRST };
	struct backend b;
	struct proxy px;
	struct stream_check c;
	uint64_t sent = 0;
	enum io_end e;
	int fd;

	start(&b, &px, upstream_shuts_then_reads, &h);
	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect: %s", strerror(errno));

	check_init(&c, h.seed_out);
	e = io_read_stream(fd, &c, UINT64_MAX, 10000);
	cr_assert_eq(c.len, h.out_len, "client got %llu bytes before %s, want %llu then EOF",
		     (unsigned long long)c.len, io_end_name(e), (unsigned long long)h.out_len);
	cr_assert_eq(c.bad_at, -1, "upstream data corrupted at offset %lld", (long long)c.bad_at);
	cr_assert_eq(e, IO_EOF, "after the upstream's data the client saw %s, want EOF",
		     io_end_name(e));

	/* the other direction must still be open */
	e = io_write_stream(fd, h.seed_in, 0, h.in_len, 10000, &sent);
	cr_assert_eq(e, IO_DONE, "after EOF the client could send only %llu of %llu bytes: %s",
		     (unsigned long long)sent, (unsigned long long)h.in_len, io_end_name(e));
	close(fd);

	cr_assert(wait_done(&h, 15000), "upstream handler did not finish");
	cr_assert_eq(h.wr_end, IO_DONE, "upstream could send only %llu bytes: %s",
		     (unsigned long long)h.wrote, io_end_name(h.wr_end));
	cr_assert_eq(h.got.len, h.in_len, "upstream got %llu of the client's %llu bytes, then %s",
		     (unsigned long long)h.got.len, (unsigned long long)h.in_len,
		     io_end_name(h.rd_end));
	cr_assert_eq(h.got.bad_at, -1, "client data corrupted at offset %lld",
		     (long long)h.got.bad_at);
	cr_assert_eq(h.rd_end, IO_EOF, "after the client's data the upstream saw %s, want EOF",
		     io_end_name(h.rd_end));
	assert_proxy_idle(&px, 1000, "after the half-closed session");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}
