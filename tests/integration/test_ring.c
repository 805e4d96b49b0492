/* Ring faults at scale through the real binary: the session limit follows the open-file limit
 * (9,000 concurrent clients in one worker), the largest completion burst loses nothing, and a
 * health probe of an upstream removed by SIGHUP does not mark the one that reuses its id. */
#include "harness.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---- many open connections ------------------------------------------------ */

/* errno of the first connection open_warm lost, 0 if none */
static int warm_errno;

/* Opens n connections to 127.0.0.1:port and has each complete a warm-byte round trip (stream
 * seed_base + i) through the echo path, so all n are open end to end at once. Returns how many
 * made it within timeout_ms; fds[i] is -1 for the others. */
static int open_warm(int *fds, int n, uint16_t port, size_t warm, uint64_t seed_base,
		     int timeout_ms)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	struct pollfd *pfd = calloc((size_t)n, sizeof(*pfd));
	int *idx = calloc((size_t)n, sizeof(*idx));
	size_t *sent = calloc((size_t)n, sizeof(*sent));
	struct stream_check *chk = calloc((size_t)n, sizeof(*chk));
	uint8_t buf[4096];
	int ok = 0, left = n;

	warm_errno = 0;
	cr_assert(pfd && idx && sent && chk && warm <= sizeof(buf));
	for (int i = 0; i < n; i++) {
		check_init(&chk[i], seed_base + (uint64_t)i);
		fds[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (fds[i] < 0 ||
		    (connect(fds[i], (struct sockaddr *)&a, sizeof(a)) < 0 &&
		     errno != EINPROGRESS)) {
			if (!warm_errno)
				warm_errno = errno;
			if (fds[i] >= 0)
				close(fds[i]);
			fds[i] = -1;
			left--;
		}
	}
	while (left > 0 && now_ms() < deadline) {
		int np = 0;

		for (int i = 0; i < n; i++) {
			if (fds[i] < 0 || chk[i].len >= warm)
				continue;
			pfd[np].fd = fds[i];
			pfd[np].events = (short)(sent[i] < warm ? POLLOUT : POLLIN);
			pfd[np].revents = 0;
			idx[np++] = i;
		}
		if (poll(pfd, (nfds_t)np, 50) < 0 && errno != EINTR)
			break;
		for (int j = 0; j < np; j++) {
			int i = idx[j];
			ssize_t k;

			if (!pfd[j].revents)
				continue;
			if (pfd[j].revents & (POLLERR | POLLHUP)) {
				close(fds[i]);
				fds[i] = -1;
				left--;
				continue;
			}
			if (sent[i] < warm) {
				fill_random(buf, warm - sent[i], chk[i].seed, sent[i]);
				k = send(fds[i], buf, warm - sent[i], MSG_NOSIGNAL);
				if (k > 0)
					sent[i] += (size_t)k;
				continue;
			}
			k = recv(fds[i], buf, sizeof(buf), 0);
			if (k > 0)
				check_feed(&chk[i], buf, (size_t)k);
			if (k == 0 || (k < 0 && errno != EAGAIN && errno != EINTR) ||
			    chk[i].bad_at >= 0) {
				close(fds[i]);
				fds[i] = -1;
				left--;
			} else if (chk[i].len >= warm) {
				ok++;
				left--;
			}
		}
	}
	for (int i = 0; i < n; i++) {
		if (fds[i] >= 0 && chk[i].len < warm) {
			close(fds[i]);
			fds[i] = -1;
		}
	}
	free(pfd);
	free(idx);
	free(sent);
	free(chk);
	return ok;
}

/* ---- finding 4: the largest completion burst is counted and loses nothing ---------------- */

/* The biggest batch of completions the proxy makes without reaping is a mass teardown from its
 * timer: every expired session's cancels and closes are submitted in SQ-sized chunks within one
 * timer pass, and each posts its completion at once (measured on 6.18: 4 CQEs per idle session,
 * 28,040 ready for 7,000 sessions in a 64Ki CQ). Stopping the proxy across --idle-timeout makes
 * every session expire in that one pass. Every client must then see its session end (the idle
 * timeout closes cleanly: EOF) and the proxy must return to its baseline.
 * Limit: with the CQ sized roundup_pow2(8 x sessions + buffers + 1088) this burst fills at most
 * half of it (4 per session), so it does not overflow here and the counter is only read, not
 * required to be non-zero; no load tried on 6.18 overflowed the CQ (see the branch report). */
#define F4_CLIENTS 7000
#define F4_IDLE_MS 2000

Test(ring, finding4_cq_overflow_counted_and_nothing_lost, .timeout = 60)
{
	static struct mset m;
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	char stats[32], idle[16];
	uint16_t stport = free_port();
	int *fds = calloc(F4_CLIENTS, sizeof(int)), got, eof = 0, other = 0;
	uint64_t t0;
	double ovf;

	cr_assert_not_null(fds);
	raise_nofile();
	snprintf(stats, sizeof(stats), "127.0.0.1:%u", stport);
	snprintf(idle, sizeof(idle), "%d", F4_IDLE_MS);
	cfg.extra[0] = "--workers";
	cfg.extra[1] = "1";
	cfg.extra[2] = "--stats";
	cfg.extra[3] = stats;
	cfg.extra[4] = "--idle-timeout";
	cfg.extra[5] = idle;
	cfg.nofile = 20000;
	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	proxy_start(&px, &cfg);
	backend_run(&b, BK_ECHO);
	metrics_scrape(stport, &m);
	cr_assert_eq(metrics_val(&m, "uproxy_ring_cq_overflows_total"), 0);

	t0 = now_ms();
	got = open_warm(fds, F4_CLIENTS, px.port, 64, 0x4000000, 20000);
	/* EADDRNOTAVAIL here means the host ran out of ephemeral ports (TIME_WAIT from earlier
	 * mass-connection tests), not a proxy fault */
	cr_assert_eq(got, F4_CLIENTS, "only %d of %d clients completed a round trip (first lost: "
		     "%s)", got, F4_CLIENTS, warm_errno ? strerror(warm_errno) : "no errno");
	cr_log_info("%d sessions open in %llu ms", got, (unsigned long long)(now_ms() - t0));
	/* all of them expire while the proxy is stopped: one timer pass tears every one down */
	cr_assert_eq(kill(px.proc.pid, SIGSTOP), 0);
	sleep_ms(F4_IDLE_MS + 500);
	cr_assert_eq(kill(px.proc.pid, SIGCONT), 0);
	t0 = now_ms();
	for (int i = 0; i < F4_CLIENTS; i++) {
		uint64_t extra = 0;
		/* 10 s for all: the 7,000 closes took ~0.2 s here */
		int left = (int)(t0 + 10000 > now_ms() ? t0 + 10000 - now_ms() : 1);
		enum io_end e = io_wait_close(fds[i], left, &extra);

		if (e == IO_EOF && extra == 0)
			eof++;
		else if (!other++)
			cr_log_error("client %d: %s with %llu unexpected bytes", i, io_end_name(e),
				     (unsigned long long)extra);
		close(fds[i]);
	}
	cr_log_info("%d clients closed by the idle timeout in %llu ms", eof,
		    (unsigned long long)(now_ms() - t0));
	cr_assert_eq(eof, F4_CLIENTS, "%d of %d idle sessions ended with a clean EOF after the "
		     "mass expiry (%d did not): a completion was lost", eof, F4_CLIENTS, other);
	assert_proxy_idle(&px, 5000, "after the mass expiry");
	metrics_scrape(stport, &m);
	ovf = metrics_val(&m, "uproxy_ring_cq_overflows_total");
	cr_log_info("uproxy_ring_cq_overflows_total %.0f", ovf);
	cr_assert_geq(ovf, 0, "no uproxy_ring_cq_overflows_total in /metrics");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
	free(fds);
}

/* ---- finding 7: the session limit follows the open-file limit -------------------------- */

/* 9,000 clients, each with an upstream: 18,000 fds in the proxy, under RLIMIT_NOFILE 20,000
 * (the hard limit on these machines). One worker, so that the whole load meets one ring: with
 * the two workers this 2-CPU host would start, SO_REUSEPORT halves it and each half stays below
 * the old per-ring cap of 7,800 (8 CQEs per session in 64Ki). */
#define F7_CLIENTS 9000
#define F7_NOFILE 20000
#define F7_LEN (16 * KIB)
#define F7_WARM 256
/* Measured with the load spread over two workers (each under the old cap): all 9,000 open and
 * echoed in ~4-6 s on this shared 2-CPU VM. 25 s is 4x that; a client left in the accept queue
 * never gets its warm round trip, so the old cap turns into a timeout of exactly the excess. */
#define F7_BOUND_MS 25000

Test(ring, finding7_9000_concurrent_with_nofile_20000, .timeout = 60)
{
	static const char *const extra[] = { "--workers", "1", NULL };
	struct backend b;
	struct proxy px;
	struct proxy_cfg cfg = { 0 };
	struct multi_stats st;
	struct rlimit rl;

	/* this process holds both ends: 9,000 clients and the 9,000 the backend accepted */
	raise_nofile();
	cr_assert_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
	cr_assert_geq((long)rl.rlim_cur, 2 * F7_CLIENTS + 200, "the test needs %d fds for %d "
		      "clients and their upstream ends; RLIMIT_NOFILE is %ld",
		      2 * F7_CLIENTS + 200, F7_CLIENTS, (long)rl.rlim_cur);
	backend_bind(&b, AF_INET);
	cfg.up_port = b.port;
	cfg.nofile = F7_NOFILE;
	for (int i = 0; extra[i]; i++)
		cfg.extra[i] = extra[i];
	proxy_start(&px, &cfg);
	backend_run(&b, BK_ECHO);
	cr_assert_eq(nofile_soft_of(px.proc.pid), F7_NOFILE);

	multi_echo(&st, F7_CLIENTS, AF_INET, px.port, F7_LEN, F7_WARM, 0x7000000, F7_BOUND_MS);
	cr_log_info("%d clients × %llu KiB echoed in %llu ms, upstream peak %d open", F7_CLIENTS,
		    (unsigned long long)(F7_LEN / KIB), (unsigned long long)st.ms,
		    atomic_load(&b.peak_open));
	cr_assert_eq(st.warm_ok, F7_CLIENTS, "the %d clients did not all complete a %d-byte round "
		     "trip while all were open within %d ms: the upstream saw at most %d "
		     "connections open at once (the rest waited in the accept queue); %s",
		     F7_CLIENTS, F7_WARM, F7_BOUND_MS, atomic_load(&b.peak_open), st.first_problem);
	cr_assert_eq(st.ok, F7_CLIENTS, "%d of %d sessions intact (connect failed %d, corrupt %d, "
		     "early EOF %d, reset %d, timeout %d) within %d ms; %s", st.ok, F7_CLIENTS,
		     st.connect_failed, st.corrupt, st.short_eof, st.reset, st.timeout, F7_BOUND_MS,
		     st.first_problem);
	cr_assert_geq(atomic_load(&b.peak_open), F7_CLIENTS, "the upstream saw at most %d "
		      "connections open at once, want %d", atomic_load(&b.peak_open), F7_CLIENTS);
	/* 18,000 closes; the 1,000-session test needs well under 1 s */
	assert_proxy_idle(&px, 10000, "after 9,000 concurrent sessions");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
}

/* ---- finding 6: a probe of a removed upstream must not mark the one reusing its id --------- */

/* The probe of A waits for --connect-timeout; SIGHUP swaps A for B meanwhile, and B takes A's
 * id (new members fill the lowest free id). C is in both pools, so that B being marked down
 * shows in the traffic too: roundrobin over two up members alternates, and a B marked down
 * gets nothing until its own next probe (a health round later). */
/* Half-way between two health rounds (not a multiple of 500): a B wrongly marked down stays
 * down ~250 ms, until the round after the probe's close probes B itself, which is ~12 of the
 * sessions below (one per ~20 ms). */
#define F6_CONNECT_TIMEOUT_MS 1750
#define F6_HEALTH_MS 500
#define F6_WATCH_MS 3000
#define POOL_FILE "listen 127.0.0.1:%u\nupstream 127.0.0.1:%u\nupstream 127.0.0.1:%u\n"

Test(ring, finding6_probe_of_removed_backend_does_not_mark_new_one, .timeout = 30,
     .fini = conf_dir_remove)
{
	struct blackhole a;
	struct backend b, c;
	struct proxy px;
	char dir[64], path[128], down_b[96], st[64];
	char *argv[] = { (char *)uproxy_bin(), "--config", path, "--workers", "1",
			 "--health-interval", "500", "--fail-threshold", "1",
			 "--connect-timeout", "1750", "--log-level", "info", NULL };
	uint64_t t_spawn = 0, t_probe, t_hup, t_applied, t_end;
	int n = 0, on_b = 0, run = 0, worst_run = 0, fill_syn, fill_all;
	bool ready = false;

	conf_dir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/uproxy.conf", dir);
	blackhole_open(&a);
	backend_bind(&b, AF_INET);
	backend_bind(&c, AF_INET);
	backend_run(&b, BK_ECHO);
	backend_run(&c, BK_ECHO);
	snprintf(down_b, sizeof(down_b), "upstream 127.0.0.1:%u is down", b.port);
	/* the black hole's own fillers: the proxy's probe is one more */
	fill_syn = tcp4_socks_to(a.port, TCP4_SYN_SENT);
	fill_all = tcp4_socks_to(a.port, 0);

	/* no client before the reload: it would be sent to A and wait for the timeout */
	memset(&px, 0, sizeof(px));
	px.family = AF_INET;
	for (int attempt = 0; attempt < 3 && !ready; attempt++) {
		px.port = free_port();
		file_write_atomic(path, POOL_FILE, px.port, a.port, c.port);
		t_spawn = now_ms();
		cr_assert_eq(proc_spawn(&px.proc, argv, 0, 0), 0);
		for (int i = 0; i < 100 && !ready && !proc_wait(&px.proc, 0); i++) {
			ready = tcp4_listening(px.port);
			if (!ready)
				sleep_ms(10);
		}
		if (!ready) {
			char *err = proxy_stderr(&px);

			proc_kill(&px.proc);
			cr_assert(WIFEXITED(px.proc.status) && WEXITSTATUS(px.proc.status) == 1,
				  "uproxy --config not listening within 1 s (%s); stderr:\n%s",
				  status_str(&px.proc, st, sizeof(st)), err);
			free(err);
			proc_release(&px.proc);
		}
	}
	cr_assert(ready, "uproxy --config never got a free port");

	/* the first health round starts with the worker: its probe of A is in flight */
	for (int i = 0; i < 50 && tcp4_socks_to(a.port, TCP4_SYN_SENT) == fill_syn; i++)
		sleep_ms(10);
	t_probe = now_ms();
	cr_assert_eq(tcp4_socks_to(a.port, TCP4_SYN_SENT), fill_syn + 1, "no probe of A in flight "
		     "%llu ms after start", (unsigned long long)(t_probe - t_spawn));

	file_write_atomic(path, POOL_FILE, px.port, b.port, c.port);
	t_hup = now_ms();
	cr_assert_eq(kill(px.proc.pid, SIGHUP), 0);
	cr_assert_geq(proxy_wait_log(&px, "upstream pool changed", 0, 1000), 0,
		      "SIGHUP: no 'upstream pool changed' in the log within 1 s");
	t_applied = now_ms();
	/* the set-up must hold: the reload landed while A's probe was still waiting */
	cr_assert_eq(tcp4_socks_to(a.port, TCP4_SYN_SENT), fill_syn + 1, "A's probe was no longer "
		     "in flight when the reload was applied (%llu ms after start): nothing tested",
		     (unsigned long long)(now_ms() - t_spawn));

	/* sessions from the reload until F6_WATCH_MS after A's probe timed out */
	t_end = t_spawn + F6_CONNECT_TIMEOUT_MS + F6_WATCH_MS;
	while (now_ms() < t_end) {
		/* bytes, not accepts: the health checks connect to B and C too */
		unsigned long long b0 = atomic_load(&b.bytes_in), c0 = atomic_load(&c.bytes_in);
		int db, dc;
		int fd = tcp_connect(AF_INET, px.port, 1000);

		cr_assert_geq(fd, 0, "session %d (%llu ms after SIGHUP): connect: %s", n,
			      (unsigned long long)(now_ms() - t_hup), strerror(errno));
		/* 1 s: a loopback round trip takes well under 10 ms */
		cr_assert(echo_roundtrip(fd, 0x6000 + (uint64_t)n, 64, 1000), "session %d (%llu ms "
			  "after SIGHUP): no echo", n, (unsigned long long)(now_ms() - t_hup));
		close(fd);
		db = atomic_load(&b.bytes_in) - b0 == 64;
		dc = atomic_load(&c.bytes_in) - c0 == 64;
		cr_assert_eq(db + dc, 1, "session %d: B got %llu bytes and C %llu, want 64 on one",
			     n, atomic_load(&b.bytes_in) - b0, atomic_load(&c.bytes_in) - c0);
		on_b += db;
		run = db ? 0 : run + 1;
		worst_run = run > worst_run ? run : worst_run;
		n++;
		sleep_ms(20);
	}
	cr_assert_eq(tcp4_socks_to(a.port, 0), fill_all, "A's probe still open %d ms after its "
		     "%d ms connect timeout", F6_WATCH_MS, F6_CONNECT_TIMEOUT_MS);
	cr_log_info("probe of A seen %llu ms after start, reload applied %llu ms after start; %d "
		    "sessions after it, %d on B, longest run without B %d",
		    (unsigned long long)(t_probe - t_spawn),
		    (unsigned long long)(t_applied - t_spawn),
		    n, on_b, worst_run);
	cr_assert_lt(proxy_wait_log(&px, down_b, 0, 0), 0, "A's probe timed out after SIGHUP "
		     "replaced A by B, and the log says B (healthy, listening) is down:\n%s",
		     proxy_stderr(&px));
	/* roundrobin over B and C alternates; 3 in a row without B is already a skipped turn */
	cr_assert_leq(worst_run, 2, "%d sessions in a row went to C: B was out of the rotation "
		      "(marked down by A's probe?); B got %d of %d", worst_run, on_b, n);
	cr_assert_geq(on_b * 5, n * 2, "B got %d of %d sessions, want about half", on_b, n);
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&b);
	backend_stop(&c);
	blackhole_close(&a);
}
