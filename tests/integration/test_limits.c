/* Resource limits: 1,000 concurrent and 10,000 sequential sessions (no fd or
 * RSS growth), a client that never reads (bounded memory, no loss, others not
 * held up), no CPU spin when idle, stalled or out of fds (EMFILE) and recovery
 * after it, --max-conns and its default from the open-file limit. */
#include "harness.h"

#include <criterion/criterion.h>
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* CPU time the proxy uses over ms milliseconds, in milliseconds. */
static long cpu_ms_over(pid_t pid, unsigned int ms)
{
	long hz = sysconf(_SC_CLK_TCK), t0 = cpu_ticks(pid), t1;

	sleep_ms(ms);
	t1 = cpu_ticks(pid);
	return (t1 - t0) * 1000 / hz;
}

Test(limits, concurrent_1000, .timeout = 60) /* serial */
{
	struct backend b;
	struct proxy px;
	struct multi_stats st;

	raise_nofile();
	setup_echo(&b, &px, NULL);
	multi_echo(&st, 1000, AF_INET, px.port, 64 * KIB, 1 * KIB, 0x1000000, 45000);
	cr_log_info("1000 × 64 KiB echoed in %llu ms", (unsigned long long)st.ms);
	cr_assert_eq(st.ok, 1000, "%d of 1000 sessions intact (connect failed %d, corrupt %d, "
		     "early EOF %d, reset %d, timeout %d); %s", st.ok, st.connect_failed,
		     st.corrupt, st.short_eof, st.reset, st.timeout, st.first_problem);
	cr_assert_eq(st.warm_ok, 1000, "only %d sessions completed their first round trip while "
		     "all were open", st.warm_ok);
	cr_assert_geq(atomic_load(&b.peak_open), 1000, "the upstream saw at most %d connections "
		      "open at once, want 1000", atomic_load(&b.peak_open));
	assert_proxy_idle(&px, 3000, "after 1000 concurrent sessions");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(limits, sequential_10000, .timeout = 60) /* serial */
{
	struct backend b;
	struct proxy px;
	uint8_t msg[100], rep[100];
	long rss_1000 = 0, rss_end;
	uint64_t t0 = now_ms();

	setup_echo(&b, &px, NULL);
	for (int i = 0; i < 10000; i++) {
		int fd = tcp_connect(AF_INET, px.port, 3000);
		size_t done = 0;
		enum io_end e;

		cr_assert_geq(fd, 0, "connection %d: connect: %s", i, strerror(errno));
		fill_random(msg, sizeof(msg), 0x5e9, (uint64_t)i * sizeof(msg));
		e = io_write_all(fd, msg, sizeof(msg), 3000, &done);
		cr_assert_eq(e, IO_DONE, "connection %d: send: %s", i, io_end_name(e));
		e = io_read_exact(fd, rep, sizeof(rep), 3000, &done);
		cr_assert_eq(e, IO_DONE, "connection %d: echo: %s after %zu of 100 bytes", i,
			     io_end_name(e), done);
		cr_assert_arr_eq(rep, msg, sizeof(msg), "connection %d: echo differs", i);
		close(fd);
		if (i == 999) {
			assert_proxy_idle(&px, 2000, "after the first 1000 connections");
			rss_1000 = rss_kib(px.proc.pid);
		}
		cr_assert_lt(now_ms() - t0, 50000, "only %d connections in 50 s", i);
	}
	cr_log_info("10000 connections in %llu ms", (unsigned long long)(now_ms() - t0));
	assert_proxy_idle(&px, 1000, "after 10000 sequential connections");
	rss_end = rss_kib(px.proc.pid);
	if (proxy_is_sanitized(&px))
		cr_log_info("sanitizer build: RSS %ld KiB → %ld KiB not checked", rss_1000, rss_end);
	else
		cr_assert_lt(rss_end - rss_1000, 2048, "RSS grew from %ld KiB after 1000 connections "
			     "to %ld KiB after 10000 (want < 2 MiB growth)", rss_1000, rss_end);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

/* The upstream pushes as fast as the kernel takes it, for ~3 s or 256 MiB,
 * then closes normally. */
struct pusher {
	uint64_t seed;
	uint64_t accepted;
	atomic_bool pushed;
	atomic_bool done;
};

static void upstream_pusher(int fd, void *arg)
{
	struct pusher *p = arg;
	uint64_t deadline = now_ms() + 3000;
	static uint8_t buf[65536];

	while (p->accepted < 256 * MIB && now_ms() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = POLLOUT };
		ssize_t k;

		if (poll(&pfd, 1, 50) <= 0)
			continue;
		fill_random(buf, sizeof(buf), p->seed, p->accepted);
		k = send(fd, buf, sizeof(buf), MSG_NOSIGNAL);
		if (k > 0)
			p->accepted += (uint64_t)k;
		else if (k < 0 && errno != EAGAIN)
			break;
	}
	atomic_store(&p->pushed, true);
	close(fd);
	atomic_store(&p->done, true);
}

Test(limits, slow_reader_bounded, .timeout = 60) /* serial */
{
	static const char *const extra[] = { "--buffers", "4096", "--buffer-size", "16384", NULL };
	static struct pusher p = { .seed = 0x256 };
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	struct stream_check chk;
	long base, peak = 0;
	uint64_t queued_client, queued_up;
	enum io_end e;
	int fd;

	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	for (int i = 0; extra[i]; i++)
		cfg.extra[i] = extra[i];
	proxy_start(&px, &cfg);
	base = px.base_rss_kib;
	b.handler = upstream_pusher;
	b.arg = &p;
	backend_run(&b, BK_HANDLER);

	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect: %s", strerror(errno));
	for (int i = 0; i < 100 && !atomic_load(&p.pushed); i++) {
		long r = rss_kib(px.proc.pid);

		peak = r > peak ? r : peak;
		sleep_ms(50);
	}
	cr_assert(atomic_load(&p.pushed), "the upstream pusher never finished");
	sleep_ms(300);
	long r = rss_kib(px.proc.pid);

	peak = r > peak ? r : peak;
	queued_client = kernel_queued(px.port);
	queued_up = kernel_queued(b.port);
	cr_log_info("upstream pushed %llu bytes; kernel queues: client side %llu, upstream side "
		    "%llu; proxy RSS %ld → peak %ld KiB", (unsigned long long)p.accepted,
		    (unsigned long long)queued_client, (unsigned long long)queued_up, base, peak);
	cr_assert_lt(p.accepted, 32 * MIB, "the upstream pushed %llu bytes into a client that "
		     "never reads (want < 32 MiB): kernel socket queues hold %llu (client side) + "
		     "%llu (upstream side), so the proxy itself holds ≈ %lld bytes",
		     (unsigned long long)p.accepted, (unsigned long long)queued_client,
		     (unsigned long long)queued_up,
		     (long long)p.accepted - (long long)(queued_client + queued_up));
	if (proxy_is_sanitized(&px))
		cr_log_info("sanitizer build: RSS growth %ld KiB not checked", peak - base);
	else
		cr_assert_lt(peak - base, 24 * 1024, "proxy RSS grew from %ld KiB to %ld KiB while "
			     "the client did not read (want < 24 MiB growth)", base, peak);

	/* now read it all: nothing may have been lost */
	check_init(&chk, p.seed);
	e = io_read_stream(fd, &chk, UINT64_MAX, 30000);
	cr_assert_eq(chk.bad_at, -1, "stream corrupted at offset %lld", (long long)chk.bad_at);
	cr_assert_eq(chk.len, p.accepted, "client read %llu bytes, the upstream sent %llu (then %s)",
		     (unsigned long long)chk.len, (unsigned long long)p.accepted, io_end_name(e));
	cr_assert_eq(chk.hash, stream_hash(p.seed, p.accepted), "checksum differs");
	cr_assert_eq(e, IO_EOF, "after the data the client saw %s, want EOF", io_end_name(e));
	close(fd);
	assert_proxy_idle(&px, 1000, "after the slow reader finished");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

/* Says hello on each fd and waits up to ms for the echo; counts the fds that
 * were echoed (through), closed, or left silent (waiting). */
struct hello_count {
	int through, closed, waiting, wrong;
	bool ok[128];
};

static void hello_all(struct hello_count *h, const int *fds, int n, uint64_t seed, int ms)
{
	uint8_t msg[32], got[128][32];
	size_t have[128] = { 0 };
	bool over[128] = { 0 };
	uint64_t deadline = now_ms() + (uint64_t)ms;

	cr_assert_leq(n, 128);
	memset(h, 0, sizeof(*h));
	for (int i = 0; i < n; i++) {
		fill_random(msg, sizeof(msg), seed, (uint64_t)i * sizeof(msg));
		if (io_write_all(fds[i], msg, sizeof(msg), 1000, NULL) != IO_DONE) {
			over[i] = true;
			h->closed++;
		}
	}
	while (now_ms() < deadline) {
		struct pollfd pfd[128];
		int idx[128], np = 0;

		for (int i = 0; i < n; i++) {
			if (!over[i]) {
				pfd[np] = (struct pollfd){ .fd = fds[i], .events = POLLIN };
				idx[np++] = i;
			}
		}
		if (!np)
			break;
		if (poll(pfd, (nfds_t)np, 50) <= 0)
			continue;
		for (int j = 0; j < np; j++) {
			int i = idx[j];
			ssize_t k;

			if (!pfd[j].revents)
				continue;
			k = recv(fds[i], got[i] + have[i], sizeof(msg) - have[i], 0);
			if (k > 0)
				have[i] += (size_t)k;
			if (k == 0 || (k < 0 && errno != EAGAIN)) {
				over[i] = true;
				h->closed++;
			} else if (have[i] == sizeof(msg)) {
				over[i] = true;
				fill_random(msg, sizeof(msg), seed, (uint64_t)i * sizeof(msg));
				if (memcmp(msg, got[i], sizeof(msg))) {
					h->wrong++;
				} else {
					h->through++;
					h->ok[i] = true;
				}
			}
		}
	}
	for (int i = 0; i < n; i++)
		h->waiting += !over[i];
}

#define EMFILE_CLIENTS 80

Test(limits, emfile_no_spin_then_recovers, .timeout = 60) /* serial */
{
	static const char *const extra[] = { "--max-conns", "1000", NULL };
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	int fds[EMFILE_CLIENTS];
	struct hello_count h;
	long ms;

	raise_nofile();
	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	cfg.nofile = 64;
	cfg.extra[0] = extra[0];
	cfg.extra[1] = extra[1];
	proxy_start(&px, &cfg);
	backend_run(&b, BK_ECHO);

	/* each client says hello: echoed (through), closed, or waiting in the backlog */
	for (int i = 0; i < EMFILE_CLIENTS; i++) {
		fds[i] = tcp_connect(AF_INET, px.port, 1000);
		cr_assert_geq(fds[i], 0, "client %d: connect: %s", i, strerror(errno));
	}
	hello_all(&h, fds, EMFILE_CLIENTS, 0xe3f, 1500);
	cr_log_info("with 64 fds: %d clients through, %d waiting, %d closed by the proxy, "
		    "%d with wrong data", h.through, h.waiting, h.closed, h.wrong);
	cr_assert(!proc_wait(&px.proc, 0), "the proxy exited under EMFILE");
	cr_assert_eq(h.wrong, 0, "%d clients got wrong data back", h.wrong);
	cr_assert_gt(h.through, 0, "no client got through with an fd limit of 64");

	/* in that state the proxy must sleep, not spin */
	ms = cpu_ms_over(px.proc.pid, 2000);
	cr_assert_lt(ms, 200, "the proxy used %ld ms of CPU in 2 s while out of file descriptors "
		     "with %d clients waiting (want < 200 ms: it is spinning)", ms, h.waiting);

	for (int i = 0; i < EMFILE_CLIENTS; i++)
		close(fds[i]);

	/* fds are back: a new client must get through within 2 s */
	uint64_t until = now_ms() + 2000;
	bool ok = false;
	int attempts = 0;

	while (!ok && now_ms() < until) {
		int left = (int)(until - now_ms());
		int fd = tcp_connect(AF_INET, px.port, left > 0 ? left : 1);

		attempts++;
		if (fd >= 0) {
			left = (int)(until - now_ms());
			ok = echo_roundtrip(fd, 0xbac, 64, left > 0 ? left : 1);
			close(fd);
		}
		if (!ok)
			sleep_ms(20);
	}
	cr_assert(ok, "no client got through within 2 s after the fds were released (%d attempts)",
		  attempts);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(limits, idle_sessions_no_spin, .timeout = 30) /* serial */
{
	struct backend b;
	struct proxy px;
	int fds[10];
	long ms;

	setup_echo(&b, &px, NULL);
	ms = cpu_ms_over(px.proc.pid, 2000);
	cr_assert_lt(ms, 100, "the idle proxy used %ld ms of CPU in 2 s (want < 100 ms)", ms);
	for (int i = 0; i < 10; i++) {
		fds[i] = tcp_connect(AF_INET, px.port, 2000);
		cr_assert_geq(fds[i], 0, "connect: %s", strerror(errno));
		cr_assert(echo_roundtrip(fds[i], 0x1d1e + (uint64_t)i, 1024, 3000), "echo %d failed", i);
	}
	ms = cpu_ms_over(px.proc.pid, 2000);
	cr_assert_lt(ms, 100, "with 10 idle sessions the proxy used %ld ms of CPU in 2 s "
		     "(want < 100 ms)", ms);
	for (int i = 0; i < 10; i++)
		close(fds[i]);
	assert_proxy_idle(&px, 1000, "after the idle sessions closed");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

/* Both directions of NSTALL sessions stalled at once with the smallest
 * buffer pool: the pool runs dry (multishot recv ends with ENOBUFS). The
 * proxy must sleep, then deliver every byte once the peers read again. */
#define NSTALL 8
#define SEED_CL 0xc11e
#define SEED_UP 0x0b57

struct stall {
	atomic_bool release;
	atomic_int stalled, done;
	atomic_int next;
	uint64_t sent[NSTALL], got[NSTALL];
	int64_t bad[NSTALL];
	enum io_end end[NSTALL];
};

/* Writes to fd until nothing moves for 300 ms (≤ 5 s); returns bytes written. */
static uint64_t write_until_stalled(int fd, uint64_t seed)
{
	uint64_t sent = 0, t0 = now_ms(), last = t0;
	uint8_t buf[16384];

	while (now_ms() - t0 < 5000 && now_ms() - last < 300) {
		ssize_t k;

		fill_random(buf, sizeof(buf), seed, sent);
		k = send(fd, buf, sizeof(buf), MSG_NOSIGNAL);
		if (k > 0) {
			sent += (uint64_t)k;
			last = now_ms();
		} else if (k < 0 && errno == EAGAIN) {
			sleep_ms(5);
		} else {
			break;
		}
	}
	return sent;
}

static void upstream_stall_then_drain(int fd, void *arg)
{
	struct stall *s = arg;
	int me = atomic_fetch_add(&s->next, 1);
	struct stream_check c;

	if (me >= NSTALL) {
		close(fd);
		return;
	}
	s->sent[me] = write_until_stalled(fd, SEED_UP);
	atomic_fetch_add(&s->stalled, 1);
	for (int i = 0; i < 2000 && !atomic_load(&s->release); i++)
		sleep_ms(10);
	check_init(&c, SEED_CL);
	s->end[me] = io_read_stream(fd, &c, UINT64_MAX, 15000);
	s->got[me] = c.len;
	s->bad[me] = c.bad_at;
	close(fd);
	atomic_fetch_add(&s->done, 1);
}

Test(limits, stalled_tiny_pool_no_spin, .timeout = 60) /* serial */
{
	static const char *const extra[] = { "--buffers", "64", "--buffer-size", "1024", NULL };
	static struct stall s;
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	struct stream_check rx[NSTALL];
	uint64_t sent[NSTALL] = { 0 }, sum_sent = 0, sum_got = 0, sum_up = 0, sum_rx = 0;
	bool eof[NSTALL] = { 0 };
	int fds[NSTALL], left = NSTALL;
	long ms;

	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	for (int i = 0; extra[i]; i++)
		cfg.extra[i] = extra[i];
	proxy_start(&px, &cfg);
	b.handler = upstream_stall_then_drain;
	b.arg = &s;
	backend_run(&b, BK_HANDLER);

	for (int i = 0; i < NSTALL; i++) {
		fds[i] = tcp_connect(AF_INET, px.port, 2000);
		cr_assert_geq(fds[i], 0, "connect: %s", strerror(errno));
		check_init(&rx[i], SEED_UP);
	}
	/* fill every client→upstream path too, round robin until nothing moves */
	for (uint64_t t0 = now_ms(), last = t0; now_ms() - t0 < 5000 && now_ms() - last < 300;) {
		uint8_t buf[16384];
		bool moved = false;

		for (int i = 0; i < NSTALL; i++) {
			ssize_t k;

			fill_random(buf, sizeof(buf), SEED_CL, sent[i]);
			k = send(fds[i], buf, sizeof(buf), MSG_NOSIGNAL);
			if (k > 0) {
				sent[i] += (uint64_t)k;
				moved = true;
			}
		}
		if (moved)
			last = now_ms();
		else
			sleep_ms(5);
	}
	for (int i = 0; i < 500 && atomic_load(&s.stalled) < NSTALL; i++)
		sleep_ms(10);
	cr_assert_eq(atomic_load(&s.stalled), NSTALL, "only %d upstream sides got going",
		     atomic_load(&s.stalled));

	ms = cpu_ms_over(px.proc.pid, 2000);
	cr_assert_lt(ms, 200, "with %d sessions stalled both ways and the buffer pool empty the "
		     "proxy used %ld ms of CPU in 2 s (want < 200 ms: it is spinning)", NSTALL, ms);

	/* everyone reads again: every byte must arrive */
	atomic_store(&s.release, true);
	for (int i = 0; i < NSTALL; i++)
		shutdown(fds[i], SHUT_WR);
	for (uint64_t t0 = now_ms(); left && now_ms() - t0 < 20000;) {
		struct pollfd pfd[NSTALL];
		uint8_t buf[16384];

		for (int i = 0; i < NSTALL; i++)
			pfd[i] = (struct pollfd){ .fd = eof[i] ? -1 : fds[i], .events = POLLIN };
		if (poll(pfd, NSTALL, 100) <= 0)
			continue;
		for (int i = 0; i < NSTALL; i++) {
			ssize_t k;

			if (!pfd[i].revents)
				continue;
			k = recv(fds[i], buf, sizeof(buf), 0);
			if (k > 0) {
				check_feed(&rx[i], buf, (size_t)k);
			} else if (k == 0 || errno != EAGAIN) {
				eof[i] = true;
				left--;
			}
		}
	}
	for (int i = 0; i < 500 && atomic_load(&s.done) < NSTALL; i++)
		sleep_ms(10);
	cr_assert_eq(left, 0, "%d clients never saw the end of the upstream's data", left);
	cr_assert_eq(atomic_load(&s.done), NSTALL, "%d upstream sides never saw the client's EOF",
		     NSTALL - atomic_load(&s.done));
	for (int i = 0; i < NSTALL; i++) {
		cr_assert_eq(rx[i].bad_at, -1, "client %d: data corrupted at offset %lld", i,
			     (long long)rx[i].bad_at);
		cr_assert_eq(s.bad[i], -1, "upstream %d: data corrupted at offset %lld", i,
			     (long long)s.bad[i]);
		cr_assert_eq(s.end[i], IO_EOF, "upstream %d: %s instead of EOF", i,
			     io_end_name(s.end[i]));
		sum_sent += sent[i];
		sum_got += s.got[i];
		sum_up += s.sent[i];
		sum_rx += rx[i].len;
		close(fds[i]);
	}
	cr_assert_eq(sum_got, sum_sent, "clients sent %llu bytes, upstreams received %llu",
		     (unsigned long long)sum_sent, (unsigned long long)sum_got);
	cr_assert_eq(sum_rx, sum_up, "upstreams sent %llu bytes, clients received %llu",
		     (unsigned long long)sum_up, (unsigned long long)sum_rx);
	assert_proxy_idle(&px, 1000, "after the stalled sessions drained");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

/* One client that never reads must not hold up another client's transfer.
 * The first upstream connection pushes until stalled, then waits; the
 * second one is an echo. */
struct iso {
	atomic_int next;
	atomic_bool stalled, release;
	uint64_t pushed;
};

static void upstream_echo(int fd)
{
	uint8_t buf[65536];
	uint64_t deadline = now_ms() + 20000;

	while (now_ms() < deadline) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };
		ssize_t k;

		if (poll(&pfd, 1, 100) <= 0)
			continue;
		k = recv(fd, buf, sizeof(buf), 0);
		if (k > 0 && io_write_all(fd, buf, (size_t)k, 10000, NULL) == IO_DONE)
			continue;
		if (k < 0 && errno == EAGAIN)
			continue;
		break;
	}
	close(fd);
}

static void upstream_iso(int fd, void *arg)
{
	struct iso *s = arg;

	if (atomic_fetch_add(&s->next, 1) != 0) {
		upstream_echo(fd);
		return;
	}
	s->pushed = write_until_stalled(fd, 0x150);
	atomic_store(&s->stalled, true);
	for (int i = 0; i < 2000 && !atomic_load(&s->release); i++)
		sleep_ms(10);
	close(fd);
}

static void slow_client_isolation(const char *const extra[])
{
	static struct iso s;
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	struct stream_check chk;
	struct xfer x;
	enum io_end e;
	int slow, fd;

	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	for (int i = 0; extra && extra[i]; i++)
		cfg.extra[i] = extra[i];
	proxy_start(&px, &cfg);
	b.handler = upstream_iso;
	b.arg = &s;
	backend_run(&b, BK_HANDLER);

	slow = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(slow, 0, "connect: %s", strerror(errno));
	for (int i = 0; i < 800 && !atomic_load(&s.stalled); i++)
		sleep_ms(10);
	cr_assert(atomic_load(&s.stalled), "the upstream of the slow client never stalled");

	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect: %s", strerror(errno));
	xfer_run(&x, fd, 0x1507, 4 * MIB, true, 0x1507, 10000);
	cr_assert_eq(x.rx.len, 4 * MIB, "while another client did not read (%llu bytes pushed at "
		     "it), a 4 MiB echo got only %llu bytes back in 10 s (sent %llu, then %s)",
		     (unsigned long long)s.pushed, (unsigned long long)x.rx.len,
		     (unsigned long long)x.sent, io_end_name(x.recv_end));
	cr_assert_eq(x.rx.bad_at, -1, "echo corrupted at offset %lld", (long long)x.rx.bad_at);
	close(fd);

	atomic_store(&s.release, true);
	check_init(&chk, 0x150);
	e = io_read_stream(slow, &chk, UINT64_MAX, 20000);
	cr_assert_eq(chk.bad_at, -1, "slow client: data corrupted at offset %lld",
		     (long long)chk.bad_at);
	cr_assert_eq(chk.len, s.pushed, "slow client read %llu of the %llu bytes pushed, then %s",
		     (unsigned long long)chk.len, (unsigned long long)s.pushed, io_end_name(e));
	close(slow);
	assert_proxy_idle(&px, 1000, "after both clients finished");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(limits, slow_client_does_not_stall_others, .timeout = 60) /* serial */
{
	slow_client_isolation(NULL);
}

Test(limits, slow_client_does_not_stall_others_tiny_pool, .timeout = 60) /* serial */
{
	static const char *const extra[] = { "--buffers", "64", "--buffer-size", "1024", NULL };

	slow_client_isolation(extra);
}

/* Many clients that never read must not freeze everyone else either: each
 * stalled direction may hold only its share of the worker's buffer pool.
 * The client's first byte picks the upstream: 'S' pushes until stalled and
 * waits, 'E' echoes. */
struct many {
	atomic_int stalled;
	atomic_bool release;
	pthread_mutex_t mu;
	uint64_t pushed_total;
};

static void upstream_by_hello(int fd, void *arg)
{
	struct many *m = arg;
	char hello = 0;
	size_t n = 0;
	int small = 16384;
	uint64_t pushed;

	if (io_read_exact(fd, &hello, 1, 5000, &n) != IO_DONE) {
		close(fd);
		return;
	}
	if (hello == 'E') {
		upstream_echo(fd);
		return;
	}
	setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
	pushed = write_until_stalled(fd, 0x5a);
	pthread_mutex_lock(&m->mu);
	m->pushed_total += pushed;
	pthread_mutex_unlock(&m->mu);
	atomic_fetch_add(&m->stalled, 1);
	for (int i = 0; i < 3000 && !atomic_load(&m->release); i++)
		sleep_ms(10);
	close(fd);
}

static void many_slow_clients(int nslow, const char *const extra[])
{
	static struct many m = { .mu = PTHREAD_MUTEX_INITIALIZER };
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	struct stream_check chk[256];
	struct xfer x;
	int slow[256], left = nslow, fd, small = 8192;
	bool over[256] = { 0 };
	uint64_t got_total = 0;

	cr_assert_leq(nslow, 256);
	raise_nofile();
	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	for (int i = 0; extra && extra[i]; i++)
		cfg.extra[i] = extra[i];
	proxy_start(&px, &cfg);
	b.handler = upstream_by_hello;
	b.arg = &m;
	backend_run(&b, BK_HANDLER);

	for (int i = 0; i < nslow; i++) {
		int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(px.port),
					 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };

		/* a small receive buffer keeps the kernel's share of the data small */
		setsockopt(s, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
		cr_assert_eq(connect(s, (struct sockaddr *)&a, sizeof(a)), 0, "connect: %s",
			     strerror(errno));
		set_nonblock(s, true);
		cr_assert_eq(io_write_all(s, "S", 1, 1000, NULL), IO_DONE);
		slow[i] = s;
		check_init(&chk[i], 0x5a);
	}
	for (int i = 0; i < 1000 && atomic_load(&m.stalled) < nslow; i++)
		sleep_ms(10);
	cr_assert_eq(atomic_load(&m.stalled), nslow, "only %d of %d slow sessions got going",
		     atomic_load(&m.stalled), nslow);

	fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(fd, 0, "connect: %s", strerror(errno));
	cr_assert_eq(io_write_all(fd, "E", 1, 1000, NULL), IO_DONE);
	xfer_run(&x, fd, 0x1e, 1 * MIB, true, 0x1e, 10000);
	cr_assert_eq(x.rx.len, 1 * MIB, "with %d clients not reading (%llu bytes pushed at them), "
		     "a 1 MiB echo got only %llu bytes back in 10 s (sent %llu, then %s)", nslow,
		     (unsigned long long)m.pushed_total, (unsigned long long)x.rx.len,
		     (unsigned long long)x.sent, io_end_name(x.recv_end));
	cr_assert_eq(x.rx.bad_at, -1, "echo corrupted at offset %lld", (long long)x.rx.bad_at);
	close(fd);

	/* the slow ones read at last: every byte arrives */
	atomic_store(&m.release, true);
	for (uint64_t t0 = now_ms(); left && now_ms() - t0 < 30000;) {
		struct pollfd pfd[256];
		uint8_t buf[16384];

		for (int i = 0; i < nslow; i++)
			pfd[i] = (struct pollfd){ .fd = over[i] ? -1 : slow[i], .events = POLLIN };
		if (poll(pfd, (nfds_t)nslow, 100) <= 0)
			continue;
		for (int i = 0; i < nslow; i++) {
			ssize_t k;

			if (!pfd[i].revents)
				continue;
			k = recv(slow[i], buf, sizeof(buf), 0);
			if (k > 0) {
				check_feed(&chk[i], buf, (size_t)k);
			} else if (k == 0 || errno != EAGAIN) {
				over[i] = true;
				left--;
			}
		}
	}
	cr_assert_eq(left, 0, "%d slow clients never got to the end of their data", left);
	for (int i = 0; i < nslow; i++) {
		cr_assert_eq(chk[i].bad_at, -1, "slow client %d: corrupted at offset %lld", i,
			     (long long)chk[i].bad_at);
		got_total += chk[i].len;
		close(slow[i]);
	}
	cr_assert_eq(got_total, m.pushed_total, "slow clients got %llu bytes, %llu were pushed",
		     (unsigned long long)got_total, (unsigned long long)m.pushed_total);
	assert_proxy_idle(&px, 2000, "after the slow clients finished");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(limits, many_slow_clients_do_not_stall_others, .timeout = 60) /* serial */
{
	many_slow_clients(160, NULL);
}

Test(limits, many_slow_clients_do_not_stall_others_tiny_pool, .timeout = 60) /* serial */
{
	static const char *const extra[] = { "--buffers", "64", "--buffer-size", "1024", NULL };

	many_slow_clients(40, extra);
}

Test(limits, max_conns_caps_and_resumes, .timeout = 30)
{
	static const char *const extra[] = { "--max-conns", "4", NULL };
	struct backend b;
	struct proxy px;
	uint8_t msg[64], got[64];
	size_t n = 0;
	enum io_end e;
	int fds[4], extra_fd;

	setup_echo(&b, &px, extra);
	for (int i = 0; i < 4; i++) {
		fds[i] = tcp_connect(AF_INET, px.port, 2000);
		cr_assert_geq(fds[i], 0, "connect: %s", strerror(errno));
		cr_assert(echo_roundtrip(fds[i], 0x4c + (uint64_t)i, 1024, 3000),
			  "client %d of 4 (within --max-conns 4) failed its echo", i);
	}
	/* the fifth waits in the kernel backlog: no echo, no close */
	extra_fd = tcp_connect(AF_INET, px.port, 2000);
	cr_assert_geq(extra_fd, 0, "the fifth client could not even connect: %s", strerror(errno));
	fill_random(msg, sizeof(msg), 0x5f, 0);
	cr_assert_eq(io_write_all(extra_fd, msg, sizeof(msg), 1000, NULL), IO_DONE);
	e = io_read_exact(extra_fd, got, sizeof(got), 700, &n);
	cr_assert_eq(e, IO_TIMEOUT, "with --max-conns 4 and 4 sessions open the fifth client got "
		     "%s (%zu bytes), want to wait", e == IO_DONE ? "its echo" : io_end_name(e), n);
	cr_assert_leq(atomic_load(&b.peak_open), 4, "upstream saw %d sessions at once",
		      atomic_load(&b.peak_open));

	/* one leaves: the fifth must be served */
	close(fds[0]);
	e = io_read_exact(extra_fd, got + n, sizeof(got) - n, 2000, &n);
	cr_assert_eq(e, IO_DONE, "2 s after a session closed the waiting client got %s",
		     io_end_name(e));
	cr_assert_arr_eq(got, msg, sizeof(msg), "the waiting client's echo differs");
	close(extra_fd);
	for (int i = 1; i < 4; i++)
		close(fds[i]);
	assert_proxy_idle(&px, 1000, "after the capped sessions");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(limits, default_max_conns_from_nofile, .timeout = 30)
{
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	struct hello_count h;
	int fds[20], waiting[20], nw = 0, closed = 0;

	/* README: the default is (open-file limit − 32) / 2 = 16 for 64 */
	raise_nofile();
	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	cfg.nofile = 64;
	proxy_start(&px, &cfg);
	backend_run(&b, BK_ECHO);
	for (int i = 0; i < 20; i++) {
		fds[i] = tcp_connect(AF_INET, px.port, 1000);
		cr_assert_geq(fds[i], 0, "client %d: connect: %s", i, strerror(errno));
	}
	hello_all(&h, fds, 20, 0xdef, 1500);
	cr_assert_eq(h.wrong, 0, "%d clients got wrong data", h.wrong);
	cr_assert_eq(h.through, 16, "with an open-file limit of 64, %d of 20 clients got through "
		     "(%d closed, %d waiting); want (64 − 32) / 2 = 16", h.through, h.closed,
		     h.waiting);
	cr_assert_eq(h.waiting, 4, "%d clients closed by the proxy instead of waiting", h.closed);

	/* four sessions end: the four waiting clients get through */
	for (int i = 0; i < 20; i++) {
		if (!h.ok[i])
			waiting[nw++] = fds[i];
		else if (closed < 4) {
			close(fds[i]);
			fds[i] = -1;
			closed++;
		}
	}
	uint8_t buf[32];
	int served = 0;

	for (int i = 0; i < nw; i++) {
		size_t n = 0;

		served += io_read_exact(waiting[i], buf, sizeof(buf), 2000, &n) == IO_DONE;
	}
	cr_assert_eq(served, nw, "after 4 sessions closed only %d of the %d waiting clients were "
		     "served within 2 s", served, nw);
	for (int i = 0; i < 20; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	assert_proxy_idle(&px, 2000, "after the capped sessions");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

Test(limits, raises_soft_nofile_limit, .timeout = 20)
{
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	long soft;

	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	cfg.nofile_soft = 256;
	cfg.nofile = 4096;
	proxy_start(&px, &cfg);
	soft = nofile_soft_of(px.proc.pid);
	cr_assert_eq(soft, 4096, "started with soft/hard open-file limits 256/4096, the proxy's "
		     "soft limit is %ld, want 4096", soft);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}
