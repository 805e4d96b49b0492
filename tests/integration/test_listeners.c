/* Several listeners in one process (issue 12, part 1) through the real binary, configured as
 * [listener NAME] and [pool NAME] sections of a config file (the syntax of the spec):
 * each listener reaches its own pool (1 MiB byte-exact through each), keeps its own timeouts
 * and access log, is named in the metrics (a listener label) and in the start-up log; SIGHUP
 * adds a listener (bound and served at once), removes one (refused at once, its sessions drain
 * for its drain-timeout and are then reset, the others' sessions untouched) and changes one's
 * pool (new sessions to the new pool, open ones stay on the old); a bad file on SIGHUP keeps
 * the running config and is counted (also one that puts a listener on another's address spelled
 * another way, localhost:P next to 127.0.0.1:P); a bad file at start exits 2 naming file and
 * line.
 *
 * Which pool served a session is read from the backends' accept counters, and the proxies
 * start without the harness's readiness probe (proxy_spawn_ports), so every counter starts at
 * zero. */
#include "harness.h"

#include <criterion/criterion.h>
#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define LBL(...) ((const char *const[]){ __VA_ARGS__, NULL })

/* The series of stats.c that count sessions: each must carry listener="NAME". */
#define ACCEPTED "uproxy_connections_accepted_total"
#define ACTIVE "uproxy_connections_active"
#define CLOSED "uproxy_connections_closed_total"
#define BYTES "uproxy_bytes_total"
#define RELOADS "uproxy_config_reloads_total"

/* ---- config files of sections --------------------------------------------- */

struct pool_def {
	const char *name;
	struct backend *bk[2];
	int n;
};

struct lst_def {
	const char *name;
	uint16_t port;
	struct backend *bk[2]; /* its own upstream lines ... */
	int n;
	const char *pool;  /* ... or "pool NAME" */
	const char *extra; /* more lines for its section, or NULL */
	bool absent;	   /* left out of the file (added by a later SIGHUP) */
};

struct conf {
	char dir[64], path[128];
	const char *global; /* lines before the first section, or NULL */
	bool stats;	/* --stats on a free port ... */
	bool stats_cli; /* ... given on the command line, not as the file's 'stats' */
	uint16_t stats_port;
	struct pool_def pools[2];
	int npools;
	struct lst_def l[4];
	int nl;
	const char *tail; /* lines after the last section, or NULL */
};

/* The file's text (malloc'd): global lines, [pool] sections, then [listener] sections. */
static char *conf_text(const struct conf *c)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	cr_assert_not_null(f);
	fprintf(f, "# written by test_listeners.c\n");
	if (c->global)
		fputs(c->global, f);
	if (c->stats && !c->stats_cli)
		fprintf(f, "stats 127.0.0.1:%u\n", c->stats_port);
	for (int i = 0; i < c->npools; i++) {
		fprintf(f, "\n[pool %s]\n", c->pools[i].name);
		for (int j = 0; j < c->pools[i].n; j++)
			fprintf(f, "upstream 127.0.0.1:%u\n", c->pools[i].bk[j]->port);
	}
	for (int i = 0; i < c->nl; i++) {
		const struct lst_def *l = &c->l[i];

		if (l->absent)
			continue;
		fprintf(f, "\n[listener %s]\nlisten 127.0.0.1:%u\n", l->name, l->port);
		if (l->pool)
			fprintf(f, "pool %s\n", l->pool);
		for (int j = 0; j < l->n; j++)
			fprintf(f, "upstream 127.0.0.1:%u\n", l->bk[j]->port);
		if (l->extra)
			fputs(l->extra, f);
	}
	if (c->tail)
		fputs(c->tail, f);
	cr_assert_eq(fclose(f), 0);
	return text;
}

/* Writes the file (atomically: a SIGHUP never reads half of it); returns its text. */
static char *conf_write(const struct conf *c)
{
	char *text = conf_text(c);

	file_write_atomic(c->path, "%s", text);
	return text;
}

/* The conf's private directory and file name; the test's .fini removes both. */
static void conf_init(struct conf *c)
{
	memset(c, 0, sizeof(*c));
	conf_dir_make(c->dir, sizeof(c->dir));
	snprintf(c->path, sizeof(c->path), "%s/uproxy.conf", c->dir);
}

/* A free port that none of the conf's listeners (or stats) uses yet. */
static uint16_t fresh_port(const struct conf *c)
{
	for (;;) {
		uint16_t p = free_port();
		bool used = c->stats && p == c->stats_port;

		for (int i = 0; i < c->nl; i++)
			used |= c->l[i].port == p;
		if (!used)
			return p;
	}
}

/* Picks free ports for the listeners in the file (and stats), writes it and starts
 * uproxy --config on it, until every port listens; 3 attempts against port races. */
static void start_conf(struct proxy *px, struct conf *c)
{
	char stats[32];
	const char *args[] = { "--config", c->path, c->stats_cli ? "--stats" : NULL, stats, NULL };

	for (int attempt = 0; attempt < 3; attempt++) {
		uint16_t ports[6];
		int n = 0;

		for (int i = 0; i < c->nl; i++)
			c->l[i].port = 0;
		c->stats_port = 0;
		for (int i = 0; i < c->nl; i++) {
			if (c->l[i].absent)
				continue;
			c->l[i].port = fresh_port(c);
			ports[n++] = c->l[i].port;
		}
		if (c->stats) {
			c->stats_port = fresh_port(c);
			ports[n++] = c->stats_port;
			snprintf(stats, sizeof(stats), "127.0.0.1:%u", c->stats_port);
		}
		free(conf_write(c));
		if (proxy_spawn_ports(px, args, ports, n))
			return;
	}
	cr_assert_fail("uproxy --config %s never got its ports free", c->path);
}

/* ---- sessions ----------------------------------------------------------------- */

/* A connected (non-blocking) client socket to 127.0.0.1:port; asserts. */
static int conn(uint16_t port, const char *what)
{
	int fd = tcp_connect(AF_INET, port, 2000);

	cr_assert_geq(fd, 0, "%s: connect to 127.0.0.1:%u: %s", what, port, strerror(errno));
	return fd;
}

/* Sends len bytes of stream seed on fd (then SHUT_WR) through an echo path and asserts the
 * echo is byte-exact and ends with EOF. */
static void echo_exact(int fd, uint64_t len, uint64_t seed, const char *what)
{
	struct xfer x;

	xfer_run(&x, fd, seed, len, true, seed, 10000);
	cr_assert_eq(x.sent, len, "%s: sent %llu of %llu bytes (%s)", what,
		     (unsigned long long)x.sent, (unsigned long long)len, io_end_name(x.send_end));
	cr_assert_lt(x.rx.bad_at, 0, "%s: echo corrupt at byte %lld", what, (long long)x.rx.bad_at);
	cr_assert_eq(x.rx.len, len, "%s: echoed %llu of %llu bytes, then %s", what,
		     (unsigned long long)x.rx.len, (unsigned long long)len,
		     io_end_name(x.recv_end));
	cr_assert_eq(x.recv_end, IO_EOF, "%s: the echo ended with %s, want EOF", what,
		     io_end_name(x.recv_end));
	cr_assert_eq(x.rx.hash, stream_hash(seed, len), "%s: echo checksum differs", what);
}

/* One session of len bytes on port; returns the index in bk[0..n) of the one backend that
 * accepted it (asserts that exactly one of them did). */
static int serve_which(uint16_t port, uint64_t len, uint64_t seed, struct backend *const bk[],
		       int n, const char *what)
{
	int before[8], idx = -1, grew = 0;
	int fd;

	cr_assert_leq(n, 8);
	for (int i = 0; i < n; i++)
		before[i] = atomic_load(&bk[i]->accepted);
	fd = conn(port, what);
	echo_exact(fd, len, seed, what);
	close(fd);
	for (int i = 0; i < n; i++) {
		int d = atomic_load(&bk[i]->accepted) - before[i];

		grew += d;
		if (d > 0)
			idx = i;
	}
	cr_assert_eq(grew, 1, "%s: the backends accepted %d connections for one session", what,
		     grew);
	return idx;
}

/* Waits ≤ timeout_ms for the proxy to be back to its baseline fd count. */
static void wait_fds_base(const struct proxy *px, int timeout_ms, const char *what)
{
	uint64_t deadline = now_ms() + (uint64_t)timeout_ms;
	int fds;

	while ((fds = proxy_fds(px)) != px->base_fds && now_ms() < deadline)
		sleep_ms(10);
	cr_assert_eq(fds, px->base_fds, "%s: the proxy holds %d fds, %d at start", what, fds,
		     px->base_fds);
}

/* The proxy's fd count once it has stayed the same for 200 ms (≤ 2 s). */
static int fds_settled(const struct proxy *px)
{
	int fds = proxy_fds(px);

	for (int i = 0, steady = 0; i < 100 && steady < 10; i++) {
		int n;

		sleep_ms(20);
		n = proxy_fds(px);
		steady = n == fds ? steady + 1 : 0;
		fds = n;
	}
	return fds;
}

/* After a SIGHUP that added or removed listeners (so the start-up fd baseline no longer
 * holds): with no session open, one more 4 KiB session on each of ports[0..n) leaves the fd
 * count where it was. Returns that count. */
static int expect_no_session_leak(const struct proxy *px, const uint16_t ports[], int n)
{
	int before = fds_settled(px), after;
	uint64_t deadline;

	for (int i = 0; i < n; i++) {
		int fd = conn(ports[i], "the leak check");

		echo_exact(fd, 4096, 0x1eac + (uint64_t)i, "the leak check");
		close(fd);
	}
	deadline = now_ms() + 2000;
	while ((after = proxy_fds(px)) != before && now_ms() < deadline)
		sleep_ms(10);
	cr_assert_eq(after, before, "after a session on each listener the proxy holds %d fds, "
		     "%d before", after, before);
	return before;
}

/* The log line of the proxy's stderr that starts at offset at (up to its newline). */
static char *line_at(struct proxy *px, long at)
{
	char *err = proxy_stderr(px), *nl, *line;

	cr_assert_leq(at, (long)strlen(err));
	nl = strchr(err + at, '\n');
	line = strndup(err + at, nl ? (size_t)(nl - err - at) : strlen(err + at));
	free(err);
	cr_assert_not_null(line);
	return line;
}

/* A full-duplex echo transfer at a fixed rate in a thread, so that it is in flight across a
 * SIGHUP: len bytes of stream seed at rate bytes/s, then SHUT_WR, checked up to EOF. */
struct paced {
	int fd;
	uint64_t seed, len, rate;
	uint64_t sent;
	struct stream_check rx;
	enum io_end send_end, recv_end;
	uint64_t t_start, t_end;
	atomic_ullong got;
	atomic_bool done;
	pthread_t thr;
};

/* The thread: sends at most rate bytes/s, checks the echo as it comes, until EOF. */
static void *paced_main(void *arg)
{
	struct paced *p = arg;
	uint64_t deadline = p->t_start + p->len * 1000 / p->rate + 15000;
	static __thread uint8_t out[16384], in[65536];
	bool send_over = false, recv_over = false;

	p->send_end = IO_TIMEOUT;
	p->recv_end = IO_TIMEOUT;
	while (!(send_over && recv_over) && now_ms() < deadline) {
		uint64_t allowed = (now_ms() - p->t_start) * p->rate / 1000 + sizeof(out);
		struct pollfd pfd = { .fd = p->fd, .events = recv_over ? 0 : POLLIN };
		bool may_send = !send_over && p->sent < allowed;
		ssize_t k;

		if (may_send)
			pfd.events |= POLLOUT;
		poll(&pfd, 1, 5);
		while (!recv_over) {
			k = recv(p->fd, in, sizeof(in), MSG_DONTWAIT);
			if (k > 0) {
				check_feed(&p->rx, in, (size_t)k);
				atomic_store(&p->got, p->rx.len);
				continue;
			}
			if (k == 0) {
				p->recv_end = IO_EOF;
				recv_over = true;
			} else if (errno != EAGAIN && errno != EINTR) {
				p->recv_end = errno == ECONNRESET ? IO_RESET : IO_ERROR;
				recv_over = true;
			}
			break;
		}
		if (!may_send)
			continue;
		size_t want = p->len - p->sent < sizeof(out) ? (size_t)(p->len - p->sent)
							   : sizeof(out);

		if (want > allowed - p->sent)
			want = (size_t)(allowed - p->sent);
		fill_random(out, want, p->seed, p->sent);
		k = send(p->fd, out, want, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (k > 0) {
			p->sent += (uint64_t)k;
			if (p->sent == p->len) {
				p->send_end = IO_DONE;
				send_over = true;
				shutdown(p->fd, SHUT_WR);
			}
		} else if (k < 0 && errno != EAGAIN && errno != EINTR) {
			p->send_end = errno == ECONNRESET || errno == EPIPE ? IO_RESET : IO_ERROR;
			send_over = true;
		}
	}
	p->t_end = now_ms();
	atomic_store(&p->done, true);
	return NULL;
}

/* Starts the transfer and waits until min bytes have come back (it is flowing). */
static void paced_start(struct paced *p, int fd, uint64_t seed, uint64_t len, uint64_t rate,
			uint64_t min)
{
	memset(p, 0, sizeof(*p));
	p->fd = fd;
	p->seed = seed;
	p->len = len;
	p->rate = rate;
	check_init(&p->rx, seed);
	p->t_start = now_ms();
	cr_assert_eq(pthread_create(&p->thr, NULL, paced_main, p), 0);
	for (int i = 0; i < 300 && atomic_load(&p->got) < min && !atomic_load(&p->done); i++)
		sleep_ms(10);
	cr_assert_geq(atomic_load(&p->got), min, "the paced transfer did not get going: %llu "
		      "bytes back in 3 s", (unsigned long long)atomic_load(&p->got));
}

/* Joins the transfer and asserts it was whole: every byte echoed intact, then EOF. */
static void paced_join_exact(struct paced *p, const char *what)
{
	pthread_join(p->thr, NULL);
	cr_assert_eq(p->send_end, IO_DONE, "%s: sending ended with %s after %llu of %llu bytes",
		     what, io_end_name(p->send_end), (unsigned long long)p->sent,
		     (unsigned long long)p->len);
	cr_assert_lt(p->rx.bad_at, 0, "%s: corrupt at byte %lld", what, (long long)p->rx.bad_at);
	cr_assert_eq(p->rx.len, p->len, "%s: %llu of %llu bytes came back, then %s", what,
		     (unsigned long long)p->rx.len, (unsigned long long)p->len,
		     io_end_name(p->recv_end));
	cr_assert_eq(p->recv_end, IO_EOF, "%s: ended with %s, want EOF", what,
		     io_end_name(p->recv_end));
	cr_assert_eq(p->rx.hash, stream_hash(p->seed, p->len), "%s: checksum differs", what);
}

/* ---- metrics ---------------------------------------------------------------- */

/* The sum of name's samples with every label of labels (0 when none matches). */
static double msum(const struct mset *m, const char *name, const char *const labels[])
{
	double v = 0;

	metrics_sum(m, name, labels, &v);
	return v;
}

/* Scrapes until the config_reloads counters reach ok and failed, or 1 s; the scrape is in m. */
static void wait_reloads(uint16_t sport, double ok, double failed, struct mset *m)
{
	uint64_t deadline = now_ms() + 1000;

	for (;;) {
		metrics_scrape(sport, m);
		if ((msum(m, RELOADS, LBL("result=\"ok\"")) == ok &&
		     msum(m, RELOADS, LBL("result=\"failed\"")) == failed) ||
		    now_ms() >= deadline)
			break;
		sleep_ms(20);
	}
	cr_assert_eq(msum(m, RELOADS, LBL("result=\"ok\"")), ok,
		     RELOADS "{result=\"ok\"} is %g, want %g",
		     msum(m, RELOADS, LBL("result=\"ok\"")), ok);
	cr_assert_eq(msum(m, RELOADS, LBL("result=\"failed\"")), failed,
		     RELOADS "{result=\"failed\"} is %g, want %g",
		     msum(m, RELOADS, LBL("result=\"failed\"")), failed);
}

/* ---- three listeners, three pools ---------------------------------------------- */

/* alpha and bravo with one upstream each (their own pools), charlie on [pool cpool] of two. */
struct three {
	struct backend a1, b1, c1, c2;
	struct backend *all[4];
	struct conf c;
	struct proxy px;
};

/* The backends (running) and the file's sections; start_conf picks the ports. */
static void three_init(struct three *t)
{
	conf_init(&t->c);
	backend_bind(&t->a1, AF_INET);
	backend_bind(&t->b1, AF_INET);
	backend_bind(&t->c1, AF_INET);
	backend_bind(&t->c2, AF_INET);
	backend_run(&t->a1, BK_ECHO);
	backend_run(&t->b1, BK_ECHO);
	backend_run(&t->c1, BK_ECHO);
	backend_run(&t->c2, BK_ECHO);
	t->all[0] = &t->a1;
	t->all[1] = &t->b1;
	t->all[2] = &t->c1;
	t->all[3] = &t->c2;
	t->c.pools[0] = (struct pool_def){ "cpool", { &t->c1, &t->c2 }, 2 };
	t->c.npools = 1;
	t->c.l[0] = (struct lst_def){ .name = "alpha", .bk = { &t->a1 }, .n = 1 };
	t->c.l[1] = (struct lst_def){ .name = "bravo", .bk = { &t->b1 }, .n = 1 };
	t->c.l[2] = (struct lst_def){ .name = "charlie", .pool = "cpool" };
	t->c.nl = 3;
}

/* SIGTERM (exit 0 asserted) and the backends down. */
static void three_stop(struct three *t)
{
	cr_assert(proxy_stop(&t->px), "the proxy did not exit 0 on SIGTERM");
	proc_release(&t->px.proc);
	for (int i = 0; i < 4; i++)
		backend_stop(t->all[i]);
}

/* The pool (0 alpha's, 1 bravo's, 2 charlie's) that served a session of len bytes. */
static int pool_of(struct three *t, int listener, uint64_t len, uint64_t seed, const char *what)
{
	int i = serve_which(t->c.l[listener].port, len, seed, t->all, 4, what);

	return i < 2 ? i : 2;
}

/* Each listener's sessions (1 MiB, byte-exact) reach its own pool, alone or all open. */
Test(listeners, pools_per_listener, .timeout = 60, .fini = conf_dir_remove)
{
	static struct three t;
	char what[96];
	int fds[3];

	three_init(&t);
	start_conf(&t.px, &t.c);

	/* one after the other: each listener's 1 MiB goes to its own pool, byte-exact */
	for (int r = 0; r < 2; r++) {
		for (int l = 0; l < 3; l++) {
			snprintf(what, sizeof(what), "1 MiB through listener %s (round %d)",
				 t.c.l[l].name, r);
			cr_assert_eq(pool_of(&t, l, MIB, 0x1150 + (uint64_t)(r * 3 + l), what), l,
				     "%s was served by the wrong pool", what);
		}
	}
	/* all three open at once, then 1 MiB through each in turn */
	for (int l = 0; l < 3; l++)
		fds[l] = conn(t.c.l[l].port, t.c.l[l].name);
	for (int l = 0; l < 3; l++) {
		snprintf(what, sizeof(what), "1 MiB through %s with the others open",
			 t.c.l[l].name);
		echo_exact(fds[l], MIB, 0x1160 + (uint64_t)l, what);
		close(fds[l]);
	}
	cr_assert_eq(atomic_load(&t.a1.accepted), 3, "alpha's upstream accepted %d of alpha's 3 "
		     "sessions", atomic_load(&t.a1.accepted));
	cr_assert_eq(atomic_load(&t.b1.accepted), 3, "bravo's upstream accepted %d of bravo's 3 "
		     "sessions", atomic_load(&t.b1.accepted));
	cr_assert_eq(atomic_load(&t.c1.accepted) + atomic_load(&t.c2.accepted), 3,
		     "cpool accepted %d + %d of charlie's 3 sessions",
		     atomic_load(&t.c1.accepted), atomic_load(&t.c2.accepted));
	cr_assert_eq(atomic_load(&t.a1.bytes_in), 3 * MIB);
	cr_assert_eq(atomic_load(&t.b1.bytes_in), 3 * MIB);
	cr_assert_eq(atomic_load(&t.c1.bytes_in) + atomic_load(&t.c2.bytes_in), 3 * MIB);
	wait_fds_base(&t.px, 2000, "after the sessions");
	three_stop(&t);
}

/* true if line holds name as a whole word (not part of a longer name). */
static bool has_word(const char *line, const char *name)
{
	size_t n = strlen(name);

	for (const char *p = strstr(line, name); p; p = strstr(p + 1, name)) {
		bool before = p == line || !(isalnum((unsigned char)p[-1]) || strchr("_.-", p[-1]));
		bool after = !(isalnum((unsigned char)p[n]) || (p[n] && strchr("_.-", p[n])));

		if (before && after)
			return true;
	}
	return false;
}

/* true if some line of log holds both addr and name (as a word). */
static bool line_with_both(const char *log, const char *addr, const char *name)
{
	for (const char *p = log; *p;) {
		const char *nl = strchr(p, '\n');
		char *line = strndup(p, nl ? (size_t)(nl - p) : strlen(p));
		bool hit;

		cr_assert_not_null(line);
		hit = strstr(line, addr) != NULL && has_word(line, name);
		free(line);
		if (hit)
			return true;
		if (!nl)
			break;
		p = nl + 1;
	}
	return false;
}

/* The start-up log names each listener with its address. */
Test(listeners, startup_log_names_listeners, .timeout = 30, .fini = conf_dir_remove)
{
	static struct three t;

	three_init(&t);
	start_conf(&t.px, &t.c);
	for (int l = 0; l < 3; l++) {
		uint64_t deadline = now_ms() + 1000;
		char addr[32], *err;
		bool hit;

		snprintf(addr, sizeof(addr), "127.0.0.1:%u", t.c.l[l].port);
		for (;;) {
			err = proxy_stderr(&t.px);
			hit = line_with_both(err, addr, t.c.l[l].name);
			if (hit || now_ms() >= deadline)
				break;
			free(err);
			sleep_ms(20);
		}
		cr_assert(hit, "no start-up log line names listener %s together with its address "
			  "%s; stderr:\n%s", t.c.l[l].name, addr, err);
		free(err);
	}
	three_stop(&t);
}

/* Opens a session on port and makes one round trip (it is established end to end). */
static int open_idle(uint16_t port, uint64_t seed, const char *what)
{
	int fd = conn(port, what);

	cr_assert(echo_roundtrip(fd, seed, 64, 3000), "%s: the round trip failed", what);
	return fd;
}

/* Asserts a silent session on fd (idle since about t0) is closed 200-800 ms after t0 (an
 * idle-timeout of 300 ms, 500 ms margin for the timer tick and a loaded machine). */
static void expect_idle_close_300(int fd, uint64_t t0, const char *what)
{
	uint64_t extra = 0, ms;
	enum io_end e = io_wait_close(fd, 2000, &extra);

	ms = now_ms() - t0;
	cr_assert(e == IO_EOF || e == IO_RESET, "%s: a silent client saw %s after %llu ms, want "
		  "it closed after the 300 ms idle-timeout", what, io_end_name(e),
		  (unsigned long long)ms);
	cr_assert(ms >= 200 && ms <= 800, "%s: a silent client was closed after %llu ms, want "
		  "300 ms (200-800)", what, (unsigned long long)ms);
	cr_assert_eq(extra, 0, "%s: %llu unexpected bytes before the close", what,
		     (unsigned long long)extra);
}

/* Asserts a silent session on fd (idle since t0) is still open 1 s after t0, and works. */
static void expect_open_after_1s(int fd, uint64_t t0, uint64_t seed, const char *what)
{
	uint64_t extra = 0, spent = now_ms() - t0;
	enum io_end e = io_wait_close(fd, spent < 1000 ? (int)(1000 - spent) : 0, &extra);

	cr_assert_eq(e, IO_TIMEOUT, "%s: a silent client saw %s %llu ms after its last byte, "
		     "want it still open after 1 s", what, io_end_name(e),
		     (unsigned long long)(now_ms() - t0));
	cr_assert(echo_roundtrip(fd, seed, 4096, 3000), "%s: the round trip after 1 s idle failed",
		  what);
}

/* idle-timeout in one section applies to that listener only. */
Test(listeners, timeouts_per_listener, .timeout = 30, .fini = conf_dir_remove)
{
	static struct three t;
	uint64_t t0;
	int fa, fb;

	three_init(&t);
	t.c.l[0].extra = "idle-timeout 300\n";
	start_conf(&t.px, &t.c);
	fa = open_idle(t.c.l[0].port, 0x7100, "alpha (idle-timeout 300)");
	fb = open_idle(t.c.l[1].port, 0x7101, "bravo (default idle-timeout)");
	t0 = now_ms();
	expect_idle_close_300(fa, t0, "alpha, idle-timeout 300 in its section");
	expect_open_after_1s(fb, t0, 0x7102, "bravo, no idle-timeout (default 600000)");
	close(fa);
	close(fb);
	/* and a new session on alpha still works */
	cr_assert_eq(pool_of(&t, 0, 64 * KIB, 0x7103, "alpha after the timeout"), 0);
	wait_fds_base(&t.px, 2000, "after the sessions");
	three_stop(&t);
}

/* A listener key at the top level is every listener's default; a section overrides it. */
Test(listeners, timeout_default_from_top_level, .timeout = 30, .fini = conf_dir_remove)
{
	static struct three t;
	uint64_t t0;
	int fa, fb;

	three_init(&t);
	t.c.global = "idle-timeout 300   # the default of every listener\n";
	t.c.l[1].extra = "idle-timeout 60000\n";
	start_conf(&t.px, &t.c);
	fa = open_idle(t.c.l[0].port, 0x7200, "alpha (top-level idle-timeout 300)");
	fb = open_idle(t.c.l[1].port, 0x7201, "bravo (idle-timeout 60000 in its section)");
	t0 = now_ms();
	expect_idle_close_300(fa, t0, "alpha, idle-timeout 300 from the top level");
	expect_open_after_1s(fb, t0, 0x7202, "bravo, its own idle-timeout 60000 over the top "
			     "level's 300");
	close(fa);
	close(fb);
	wait_fds_base(&t.px, 2000, "after the sessions");
	three_stop(&t);
}

/* true if line holds tok as a whole space-separated token. */
static bool has_token(const char *line, const char *tok)
{
	size_t n = strlen(tok);

	for (const char *p = strstr(line, tok); p; p = strstr(p + 1, tok))
		if ((p == line || p[-1] == ' ') && (p[n] == ' ' || p[n] == '\0' || p[n] == '\n'))
			return true;
	return false;
}

/* Waits for want lines in path, then 300 ms more, and asserts it holds exactly want. */
static char *log_exactly(const char *path, int want, const char *name)
{
	char *s = alog_wait_lines(path, 0, want, 3000);

	cr_assert_eq(count_lines(s), want, "%s's access log has %d lines, want %d:\n%s", name,
		     count_lines(s), want, s);
	free(s);
	sleep_ms(300);
	s = file_read_all(path, NULL);
	cr_assert_eq(count_lines(s), want, "%s's access log has %d lines 300 ms later, want "
		     "%d:\n%s", name, count_lines(s), want, s);
	return s;
}

/* Each listener's access log gets its own sessions' lines only, with listener=NAME. */
Test(listeners, access_log_per_listener, .timeout = 30, .fini = conf_dir_remove)
{
	static struct three t;
	char ea[192], eb[192], ec[192], pa[128], pb[128], pc[128], needle[64], line[1024];
	uint16_t ports_a[2], ports_b[3];
	char *la, *lb, *lc;

	three_init(&t);
	snprintf(pa, sizeof(pa), "%s/alpha.log", t.c.dir);
	snprintf(pb, sizeof(pb), "%s/bravo.log", t.c.dir);
	snprintf(pc, sizeof(pc), "%s/charlie.log", t.c.dir);
	snprintf(ea, sizeof(ea), "access-log %s\n", pa);
	snprintf(eb, sizeof(eb), "access-log %s\nlog-format text\n", pb);
	snprintf(ec, sizeof(ec), "access-log %s\nlog-format json\n", pc);
	t.c.l[0].extra = ea;
	t.c.l[1].extra = eb;
	t.c.l[2].extra = ec;
	start_conf(&t.px, &t.c);

	for (int i = 0; i < 2; i++) {
		int fd = conn(t.c.l[0].port, "alpha");

		ports_a[i] = sock_local_port(fd);
		echo_exact(fd, 1000, 0xa100 + (uint64_t)i, "alpha");
		close(fd);
	}
	for (int i = 0; i < 3; i++) {
		int fd = conn(t.c.l[1].port, "bravo");

		ports_b[i] = sock_local_port(fd);
		echo_exact(fd, 2000, 0xa200 + (uint64_t)i, "bravo");
		close(fd);
	}
	{
		int fd = conn(t.c.l[2].port, "charlie");

		echo_exact(fd, 3000, 0xa300, "charlie");
		close(fd);
	}
	la = log_exactly(pa, 2, "alpha");
	lb = log_exactly(pb, 3, "bravo");
	lc = log_exactly(pc, 1, "charlie");
	for (int i = 0; i < 2; i++) {
		snprintf(needle, sizeof(needle), " client=127.0.0.1:%u ", ports_a[i]);
		alog_find_line(la, needle, line, sizeof(line));
		cr_assert(has_token(line, "listener=alpha"), "alpha's line lacks listener=alpha: "
			  "%s", line);
		snprintf(needle, sizeof(needle), "upstream=127.0.0.1:%u", t.a1.port);
		cr_assert(has_token(line, needle), "alpha's line lacks %s: %s", needle, line);
	}
	for (int i = 0; i < 3; i++) {
		snprintf(needle, sizeof(needle), " client=127.0.0.1:%u ", ports_b[i]);
		alog_find_line(lb, needle, line, sizeof(line));
		cr_assert(has_token(line, "listener=bravo"), "bravo's line lacks listener=bravo: "
			  "%s", line);
		snprintf(needle, sizeof(needle), "upstream=127.0.0.1:%u", t.b1.port);
		cr_assert(has_token(line, needle), "bravo's line lacks %s: %s", needle, line);
	}
	cr_assert_null(strstr(la, "bravo"), "alpha's log names bravo:\n%s", la);
	cr_assert_null(strstr(la, "charlie"), "alpha's log names charlie:\n%s", la);
	cr_assert_null(strstr(lb, "alpha"), "bravo's log names alpha:\n%s", lb);
	cr_assert_null(strstr(lb, "charlie"), "bravo's log names charlie:\n%s", lb);
	cr_assert_not_null(strstr(lc, "\"listener\":\"charlie\""),
			   "charlie's JSON line lacks \"listener\":\"charlie\": %s", lc);
	cr_assert_eq(lc[0], '{', "charlie's log-format json line is not JSON: %s", lc);
	cr_assert_not_null(strstr(lc, "\"bytes_client_to_upstream\":3000"), "%s", lc);
	free(la);
	free(lb);
	free(lc);
	three_stop(&t);
}

/* Asserts the sum of name's samples with listener="lst" (and label, if not NULL) is want. */
static void expect_metric(const struct mset *m, const char *name, const char *lst,
			  const char *label, double want)
{
	char l[64];
	double v;

	snprintf(l, sizeof(l), "listener=\"%s\"", lst);
	v = msum(m, name, label ? LBL(l, label) : LBL(l));
	cr_assert_eq(v, want, "%s{%s%s%s} = %g, want %g", name, l, label ? "," : "",
		     label ? label : "", v, want);
}

/* Asserts every sample of metric name carries listener="alpha" or listener="bravo". */
static void all_labelled(const struct mset *m, const char *name)
{
	size_t n = strlen(name);
	int seen = 0;

	for (int i = 0; i < m->n; i++) {
		const char *k = m->s[i].key;

		if (strncmp(k, name, n) != 0 || (k[n] != '\0' && k[n] != '{'))
			continue;
		seen++;
		cr_assert(strstr(k, "listener=\"alpha\"") || strstr(k, "listener=\"bravo\"") ||
				  strstr(k, "listener=\"charlie\""),
			  "the per-session sample '%s' has no listener label", k);
	}
	cr_assert_gt(seen, 0, "no %s samples in the scrape", name);
}

/* The per-session series count each listener apart, under listener="NAME". */
Test(listeners, metrics_listener_label, .timeout = 30, .fini = conf_dir_remove)
{
	static struct three t;
	static struct mset m;
	static const char *const series[] = { ACCEPTED, ACTIVE, CLOSED, BYTES };
	uint64_t deadline;

	three_init(&t);
	t.c.stats = true;
	t.c.stats_cli = true; /* a global option on the command line over a file of sections */
	start_conf(&t.px, &t.c);
	for (int i = 0; i < 2; i++)
		cr_assert_eq(pool_of(&t, 0, 1000, 0xb100 + (uint64_t)i, "alpha"), 0);
	for (int i = 0; i < 3; i++)
		cr_assert_eq(pool_of(&t, 1, 2000, 0xb200 + (uint64_t)i, "bravo"), 1);
	deadline = now_ms() + 2000;
	for (;;) {
		metrics_scrape(t.c.stats_port, &m);
		if ((msum(&m, CLOSED, LBL("listener=\"alpha\"")) == 2 &&
		     msum(&m, CLOSED, LBL("listener=\"bravo\"")) == 3) ||
		    now_ms() >= deadline)
			break;
		sleep_ms(20);
	}
	expect_metric(&m, ACCEPTED, "alpha", NULL, 2);
	expect_metric(&m, ACCEPTED, "bravo", NULL, 3);
	expect_metric(&m, ACCEPTED, "charlie", NULL, 0);
	expect_metric(&m, CLOSED, "alpha", "reason=\"normal\"", 2);
	expect_metric(&m, CLOSED, "bravo", "reason=\"normal\"", 3);
	expect_metric(&m, CLOSED, "alpha", NULL, 2); /* all reasons */
	expect_metric(&m, CLOSED, "bravo", NULL, 3);
	expect_metric(&m, BYTES, "alpha", "direction=\"client_to_upstream\"", 2000);
	expect_metric(&m, BYTES, "alpha", "direction=\"upstream_to_client\"", 2000);
	expect_metric(&m, BYTES, "bravo", "direction=\"client_to_upstream\"", 6000);
	expect_metric(&m, BYTES, "bravo", "direction=\"upstream_to_client\"", 6000);
	expect_metric(&m, ACTIVE, "alpha", NULL, 0);
	expect_metric(&m, ACTIVE, "bravo", NULL, 0);
	for (size_t i = 0; i < sizeof(series) / sizeof(series[0]); i++)
		all_labelled(&m, series[i]);
	/* and an open session shows in its listener's gauge only */
	{
		int fd = open_idle(t.c.l[1].port, 0xb300, "bravo, held");

		deadline = now_ms() + 2000;
		for (;;) {
			metrics_scrape(t.c.stats_port, &m);
			if (msum(&m, ACTIVE, LBL("listener=\"bravo\"")) == 1)
				break;
			if (now_ms() >= deadline)
				break;
			sleep_ms(20);
		}
		expect_metric(&m, ACTIVE, "bravo", NULL, 1);
		expect_metric(&m, ACTIVE, "alpha", NULL, 0);
		close(fd);
	}
	wait_fds_base(&t.px, 2000, "after the sessions");
	three_stop(&t);
}

/* ---- SIGHUP ------------------------------------------------------------------ */

static void hup(struct proxy *px)
{
	cr_assert_eq(kill(px->proc.pid, SIGHUP), 0);
}

/* SIGHUP adds a listener: bound within 500 ms, served by its pool, the others untouched. */
Test(listeners, sighup_adds_listener, .timeout = 60, .fini = conf_dir_remove)
{
	static struct three t;
	static struct mset m;
	struct backend d1;
	struct backend *all[5];
	uint64_t t0, t_bound = 0;
	char what[96];
	int held;

	three_init(&t);
	t.c.global = "workers 2\n";
	t.c.stats = true;
	backend_bind(&d1, AF_INET);
	backend_run(&d1, BK_ECHO);
	memcpy(all, t.all, sizeof(t.all));
	all[4] = &d1;
	t.c.l[3] = (struct lst_def){ .name = "delta", .bk = { &d1 }, .n = 1, .absent = true };
	t.c.nl = 4;
	start_conf(&t.px, &t.c);
	held = open_idle(t.c.l[0].port, 0xc100, "alpha, held across the SIGHUP");
	wait_reloads(t.c.stats_port, 0, 0, &m);

	t.c.l[3].port = fresh_port(&t.c);
	t.c.l[3].absent = false;
	free(conf_write(&t.c));
	t0 = now_ms();
	hup(&t.px);
	while (now_ms() - t0 < 1500) {
		if (tcp4_listening(t.c.l[3].port)) {
			t_bound = now_ms();
			break;
		}
		sleep_ms(5);
	}
	cr_assert_neq(t_bound, 0, "1.5 s after SIGHUP the new listener delta is not bound on "
		      "127.0.0.1:%u; stderr:\n%s", t.c.l[3].port, proxy_stderr(&t.px));
	cr_assert_leq(t_bound - t0, 500, "the new listener was bound %llu ms after SIGHUP, want "
		      "≤ 500 ms", (unsigned long long)(t_bound - t0));
	cr_log_info("SIGHUP: delta bound after %llu ms", (unsigned long long)(t_bound - t0));

	/* served, by its own pool: 1 MiB, then more sessions (every worker's socket accepts) */
	cr_assert_eq(serve_which(t.c.l[3].port, MIB, 0xc200, all, 5, "1 MiB through delta"), 4,
		     "delta's session went to another pool");
	for (int i = 0; i < 8; i++) {
		snprintf(what, sizeof(what), "session %d on delta", i);
		cr_assert_eq(serve_which(t.c.l[3].port, 4096, 0xc300 + (uint64_t)i, all, 5, what),
			     4, "%s went to another pool", what);
	}
	/* the others are untouched: the held session still echoes, each listener its pool */
	cr_assert(echo_roundtrip(held, 0xc400, 256 * 1024, 3000), "the session held on alpha "
		  "across the SIGHUP no longer echoes");
	for (int l = 0; l < 3; l++) {
		snprintf(what, sizeof(what), "%s after the SIGHUP", t.c.l[l].name);
		cr_assert_eq(pool_of(&t, l, 64 * KIB, 0xc500 + (uint64_t)l, what), l);
	}
	wait_reloads(t.c.stats_port, 1, 0, &m);
	echo_exact(held, 4096, 0xc600, "alpha's held session, closing");
	close(held);
	{
		const uint16_t ports[] = { t.c.l[0].port, t.c.l[1].port, t.c.l[2].port,
					   t.c.l[3].port };

		expect_no_session_leak(&t.px, ports, 4);
	}
	three_stop(&t);
	backend_stop(&d1);
}

/* Writes to fd without reading until the proxy resets it or 4 s pass; returns how it ended
 * and when (*at). The echo fills the client's receive buffer, so the proxy holds unsent bytes
 * both ways: ending the session then must reset it. */
static enum io_end pump_until_reset(int fd, uint64_t *at)
{
	static uint8_t buf[65536];
	uint64_t deadline = now_ms() + 4000;
	enum io_end e = IO_TIMEOUT;

	memset(buf, 0x5a, sizeof(buf));
	while (now_ms() < deadline) {
		ssize_t k = send(fd, buf, sizeof(buf), MSG_NOSIGNAL | MSG_DONTWAIT);

		if (k >= 0)
			continue;
		if (errno == EAGAIN || errno == EINTR) {
			struct pollfd p = { .fd = fd, .events = POLLOUT };

			poll(&p, 1, 5);
			continue;
		}
		e = errno == ECONNRESET || errno == EPIPE ? IO_RESET : IO_ERROR;
		break;
	}
	*at = now_ms();
	return e;
}

/* SIGHUP removes a listener: refused within 500 ms, its session drains (drain-timeout
 * 1000) then is reset; a transfer on another listener is untouched. */
Test(listeners, sighup_removes_listener, .timeout = 60, .fini = conf_dir_remove) /* serial */
{
	static struct three t;
	static struct paced tr;
	uint64_t t0, t_refused = 0, t_reset = 0;
	int held, flows = 0, accepted_after = 0, other_err = 0;
	enum io_end e;
	char what[96];

	three_init(&t);
	t.c.global = "workers 2\n";
	t.c.l[2].extra = "drain-timeout 1000\n";
	start_conf(&t.px, &t.c);
	held = open_idle(t.c.l[2].port, 0xd100, "charlie, held across its removal");
	/* 12 MiB at 6 MiB/s on alpha: in flight from before the SIGHUP to after charlie's drain */
	paced_start(&tr, conn(t.c.l[0].port, "alpha"), 0xd200, 12 * MIB, 6 * MIB, 256 * KIB);

	t.c.l[2].absent = true;
	free(conf_write(&t.c));
	t0 = now_ms();
	hup(&t.px);
	/* charlie's port refuses new connections within 500 ms, and keeps refusing */
	while (now_ms() - t0 < 1500) {
		int fd = tcp_connect(AF_INET, t.c.l[2].port, 100);

		if (fd >= 0) {
			accepted_after++;
			close(fd);
		} else if (errno == ECONNREFUSED) {
			t_refused = now_ms();
			break;
		} else {
			other_err = errno;
		}
		sleep_ms(5);
	}
	cr_assert_neq(t_refused, 0, "1.5 s after SIGHUP removed charlie its port still takes "
		      "connections (%d accepted; last other error: %s)", accepted_after,
		      other_err ? strerror(other_err) : "none");
	cr_assert_leq(t_refused - t0, 500, "charlie's port refused connections only %llu ms after "
		      "the SIGHUP that removed it, want ≤ 500 ms",
		      (unsigned long long)(t_refused - t0));
	for (int i = 0; i < 5; i++) {
		int fd = tcp_connect(AF_INET, t.c.l[2].port, 500);

		cr_assert(fd < 0 && errno == ECONNREFUSED, "removed listener: connection %d after "
			  "the first refusal was %s", i, fd >= 0 ? "accepted" : strerror(errno));
	}
	/* its open session keeps flowing while it drains (drain-timeout 1000) ... */
	while (now_ms() - t0 < 800) {
		snprintf(what, sizeof(what), "charlie's held session %llu ms after its removal",
			 (unsigned long long)(now_ms() - t0));
		cr_assert(echo_roundtrip(held, 0xd300 + (uint64_t)flows, 16 * KIB, 1000),
			  "%s: the round trip failed", what);
		flows++;
		sleep_ms(20);
	}
	/* ... and is reset when the drain-timeout ends */
	e = pump_until_reset(held, &t_reset);
	cr_assert_eq(e, IO_RESET, "charlie's held session after its drain-timeout: %s (%llu ms "
		     "after the SIGHUP), want a reset", io_end_name(e),
		     (unsigned long long)(t_reset - t0));
	cr_assert(t_reset - t0 >= 900 && t_reset - t0 <= 1700, "charlie's held session was reset "
		  "%llu ms after the SIGHUP, want its drain-timeout of 1000 ms (900-1700)",
		  (unsigned long long)(t_reset - t0));
	close(held);
	cr_log_info("removal: refused after %llu ms, %d round trips while draining, reset after "
		    "%llu ms", (unsigned long long)(t_refused - t0), flows,
		    (unsigned long long)(t_reset - t0));

	/* alpha's transfer was untouched: whole, byte-exact, EOF, across the whole removal */
	paced_join_exact(&tr, "alpha's 12 MiB across the SIGHUP that removed charlie");
	cr_assert(tr.t_start < t0 && tr.t_end > t_reset, "the transfer did not span the removal "
		  "(it ran %llu-%llu ms, SIGHUP at %llu, reset at %llu)",
		  (unsigned long long)tr.t_start, (unsigned long long)tr.t_end,
		  (unsigned long long)t0, (unsigned long long)t_reset);
	close(tr.fd);
	for (int l = 0; l < 2; l++) {
		snprintf(what, sizeof(what), "%s after charlie's removal", t.c.l[l].name);
		cr_assert_eq(pool_of(&t, l, 64 * KIB, 0xd400 + (uint64_t)l, what), l);
	}
	cr_assert(tcp_connect(AF_INET, t.c.l[2].port, 500) < 0 && errno == ECONNREFUSED,
		  "charlie's port takes connections again after its removal");
	{
		const uint16_t ports[] = { t.c.l[0].port, t.c.l[1].port };
		int fds = expect_no_session_leak(&t.px, ports, 2);

		cr_assert_lt(fds, t.px.base_fds, "with charlie removed and no session open the "
			     "proxy holds %d fds, %d at start: its sockets were not closed", fds,
			     t.px.base_fds);
	}
	three_stop(&t);
}

/* SIGHUP changes a listener's pool: new sessions go to the new one, an open one stays. */
Test(listeners, sighup_changes_pool, .timeout = 60, .fini = conf_dir_remove)
{
	static struct three t;
	static struct paced tr;
	struct backend a2;
	struct backend *all[5];
	uint64_t t0, t_new = 0, to_a2 = 0;
	char what[96];
	int k;

	three_init(&t);
	t.c.global = "workers 2\n";
	backend_bind(&a2, AF_INET);
	backend_run(&a2, BK_ECHO);
	memcpy(all, t.all, sizeof(t.all));
	all[4] = &a2;
	start_conf(&t.px, &t.c);
	cr_assert_eq(serve_which(t.c.l[0].port, 4096, 0xe100, all, 5, "alpha before"), 0);
	cr_assert_eq(serve_which(t.c.l[1].port, 4096, 0xe101, all, 5, "bravo before"), 1);
	/* 8 MiB at 4 MiB/s on alpha's old pool, across the change */
	paced_start(&tr, conn(t.c.l[0].port, "alpha, held"), 0xe200, 8 * MIB, 4 * MIB, 256 * KIB);

	t.c.l[0].bk[0] = &a2;
	free(conf_write(&t.c));
	t0 = now_ms();
	hup(&t.px);
	for (k = 0; now_ms() - t0 < 1000; k++) {
		snprintf(what, sizeof(what), "alpha, session %d after the SIGHUP", k);
		if (serve_which(t.c.l[0].port, 256, 0xe300 + (uint64_t)k, all, 5, what) == 4) {
			t_new = now_ms();
			to_a2 += 256;
			break;
		}
		sleep_ms(10);
	}
	cr_assert_neq(t_new, 0, "1 s after the SIGHUP that gave alpha a new pool its sessions "
		      "still go to the old one; stderr:\n%s", proxy_stderr(&t.px));
	for (int i = 0; i < 10; i++) {
		snprintf(what, sizeof(what), "alpha, session %d after the change", i);
		cr_assert_eq(serve_which(t.c.l[0].port, 256, 0xe400 + (uint64_t)i, all, 5, what), 4,
			     "%s went to the old pool", what);
		to_a2 += 256;
	}
	cr_assert_eq(pool_of(&t, 1, 4096, 0xe500, "bravo after alpha's change"), 1);
	cr_assert(!atomic_load(&tr.done), "the held transfer ended before the change was seen "
		  "(%llu ms after the SIGHUP)", (unsigned long long)(tr.t_end - t0));
	paced_join_exact(&tr, "alpha's held 8 MiB across the pool change");
	close(tr.fd);
	cr_assert_eq(atomic_load(&a2.bytes_in), to_a2, "the new pool received %llu bytes, want "
		     "the %llu of the new sessions only: the held session moved",
		     (unsigned long long)atomic_load(&a2.bytes_in), (unsigned long long)to_a2);
	cr_assert_geq(atomic_load(&t.a1.bytes_in), 8 * MIB + 4096, "the old pool received %llu "
		      "bytes: the held session did not stay on it",
		      (unsigned long long)atomic_load(&t.a1.bytes_in));
	cr_log_info("pool change: first new session on the new pool after %llu ms",
		    (unsigned long long)(t_new - t0));
	wait_fds_base(&t.px, 2000, "after the sessions");
	three_stop(&t);
	backend_stop(&a2);
}

/* SIGHUP with the file at c (whose text is text): asserts the reload is refused, with a log
 * line holding "config not reloaded" and every needle, and a line naming path:line for each
 * of lines[0..nlines) (a line may be satisfied by either of a pair: {section, listen}). */
static void expect_refused(struct proxy *px, const struct conf *c, const int lines[][2],
			   int nlines, const char *needle, const char *what)
{
	char *err = proxy_stderr(px), *line;
	long from = (long)strlen(err), at;

	free(err);
	hup(px);
	at = proxy_wait_log(px, "config not reloaded", from, 1000);
	cr_assert_geq(at, 0, "%s: no 'config not reloaded' in the log within 1 s of the SIGHUP; "
		      "stderr:\n%s", what, proxy_stderr(px));
	line = line_at(px, at);
	for (int i = 0; i < nlines; i++)
		cr_assert(text_names_line(line, c->path, lines[i][0]) ||
				  text_names_line(line, c->path, lines[i][1]),
			  "%s: the log line does not name %s:%d%s: %s", what, c->path, lines[i][0],
			  lines[i][1] != lines[i][0] ? " (or the listen line)" : "", line);
	if (needle)
		cr_assert_not_null(strstr(line, needle), "%s: the log line does not name '%s': %s",
				   what, needle, line);
	free(line);
}

/* A bad file on SIGHUP (syntax, duplicate address, unknown key) changes nothing, is logged
 * with file:line and counted; a good one then applies and is counted. */
Test(listeners, sighup_bad_config_keeps_running, .timeout = 60, .fini = conf_dir_remove)
{
	static struct three t;
	static struct mset m;
	struct backend a2;
	struct backend *all[5];
	char tail[192], what[96], *text;
	int lines[2][2], failed = 0;
	uint64_t t0;

	three_init(&t);
	t.c.global = "workers 2\n";
	t.c.stats = true;
	backend_bind(&a2, AF_INET);
	backend_run(&a2, BK_ECHO);
	memcpy(all, t.all, sizeof(t.all));
	all[4] = &a2;
	start_conf(&t.px, &t.c);
	wait_reloads(t.c.stats_port, 0, 0, &m);

	for (int bad = 0; bad < 3; bad++) {
		/* each bad file also moves alpha to a2: nothing of it may apply */
		t.c.l[0].bk[0] = &a2;
		t.c.tail = NULL;
		t.c.l[1].extra = NULL;
		if (bad == 0) {
			snprintf(tail, sizeof(tail), "\n[listener gamma\nlisten 127.0.0.1:%u\n"
				 "upstream 127.0.0.1:%u\n", fresh_port(&t.c), a2.port);
			t.c.tail = tail;
			text = conf_write(&t.c);
			lines[0][0] = lines[0][1] = text_line_of(text, "[listener gamma");
			snprintf(what, sizeof(what), "a syntax error ([listener gamma) on line %d",
				 lines[0][0]);
			expect_refused(&t.px, &t.c, lines, 1, NULL, what);
		} else if (bad == 1) {
			char sec[64];

			snprintf(tail, sizeof(tail), "\n[listener gamma]\nlisten 127.0.0.1:%u\n"
				 "upstream 127.0.0.1:%u\n", t.c.l[0].port, a2.port);
			t.c.tail = tail;
			text = conf_write(&t.c);
			lines[0][0] = text_line_of(text, "[listener alpha]");
			snprintf(sec, sizeof(sec), "listen 127.0.0.1:%u", t.c.l[0].port);
			lines[0][1] = text_line_of(text, sec);
			lines[1][0] = text_line_of(text, "[listener gamma]");
			lines[1][1] = lines[1][0] + 1;
			snprintf(what, sizeof(what), "gamma on alpha's address (lines %d and %d)",
				 lines[0][0], lines[1][0]);
			expect_refused(&t.px, &t.c, lines, 2, NULL, what);
		} else {
			t.c.l[1].extra = "frobnicate 7\n";
			text = conf_write(&t.c);
			lines[0][0] = lines[0][1] = text_line_of(text, "frobnicate 7");
			snprintf(what, sizeof(what), "an unknown key in bravo's section (line %d)",
				 lines[0][0]);
			expect_refused(&t.px, &t.c, lines, 1, "frobnicate", what);
		}
		free(text);
		failed++;
		/* the old config runs on: both listeners, each on its old pool */
		for (int i = 0; i < 4; i++) {
			uint64_t seed = 0xf100 + (uint64_t)(bad * 8 + i);
			char w[160];

			snprintf(w, sizeof(w), "alpha after %s", what);
			cr_assert_eq(serve_which(t.c.l[0].port, 4096, seed, all, 5, w), 0,
				     "%s went to a2: the bad file was half applied", w);
			snprintf(w, sizeof(w), "bravo after %s", what);
			cr_assert_eq(serve_which(t.c.l[1].port, 4096, seed + 0x100, all, 5, w), 1);
		}
		snprintf(what + strlen(what), sizeof(what) - strlen(what), ": charlie");
		cr_assert_eq(pool_of(&t, 2, 4096, 0xf280 + (uint64_t)bad, what), 2);
		wait_reloads(t.c.stats_port, 0, failed, &m);
	}
	cr_assert_eq(atomic_load(&a2.accepted), 0);
	/* a good file now applies */
	t.c.tail = NULL;
	t.c.l[1].extra = NULL;
	free(conf_write(&t.c));
	t0 = now_ms();
	hup(&t.px);
	while (now_ms() - t0 < 1000 &&
	       serve_which(t.c.l[0].port, 256, 0xf300, all, 5, "alpha after the good SIGHUP") != 4)
		sleep_ms(10);
	cr_assert_eq(serve_which(t.c.l[0].port, 256, 0xf301, all, 5, "alpha after the good SIGHUP"),
		     4, "1 s after a good SIGHUP alpha's sessions do not go to its new pool");
	cr_assert_eq(pool_of(&t, 1, 4096, 0xf302, "bravo after the good SIGHUP"), 1);
	wait_reloads(t.c.stats_port, 1, failed, &m);
	wait_fds_base(&t.px, 2000, "after the sessions");
	three_stop(&t);
	backend_stop(&a2);
}

/* A SIGHUP adding gamma on localhost:<alpha's port> is refused, naming both listeners' lines:
 * the text differs from alpha's 127.0.0.1:<port>, but with SO_REUSEPORT both binds would
 * succeed and gamma would take part of alpha's clients. The old config keeps serving (alpha
 * on its own pool, on both workers' sockets) and the failure is counted. */
Test(listeners, sighup_same_address_other_spelling_refused, .timeout = 60,
     .fini = conf_dir_remove)
{
	static struct three t;
	static struct mset m;
	struct backend g1;
	struct backend *all[5];
	char tail[160], listen[64], what[96], *text;
	int lines[2][2];

	three_init(&t);
	t.c.global = "workers 2\n";
	t.c.stats = true;
	backend_bind(&g1, AF_INET);
	backend_run(&g1, BK_ECHO);
	memcpy(all, t.all, sizeof(t.all));
	all[4] = &g1;
	start_conf(&t.px, &t.c);
	wait_reloads(t.c.stats_port, 0, 0, &m);

	snprintf(tail, sizeof(tail), "\n[listener gamma]\nlisten localhost:%u\n"
		 "upstream 127.0.0.1:%u\n", t.c.l[0].port, g1.port);
	t.c.tail = tail;
	text = conf_write(&t.c);
	snprintf(listen, sizeof(listen), "listen 127.0.0.1:%u", t.c.l[0].port);
	lines[0][0] = text_line_of(text, "[listener alpha]");
	lines[0][1] = text_line_of(text, listen);
	lines[1][0] = text_line_of(text, "[listener gamma]");
	lines[1][1] = lines[1][0] + 1;
	snprintf(what, sizeof(what), "gamma on localhost:%u, alpha's port", t.c.l[0].port);
	expect_refused(&t.px, &t.c, lines, 2, "gamma", what);
	free(text);
	wait_reloads(t.c.stats_port, 0, 1, &m);
	/* 16 sessions on alpha's port: had gamma bound, the kernel would give it about half */
	for (int i = 0; i < 16; i++) {
		char w[128];

		snprintf(w, sizeof(w), "alpha after the refused SIGHUP, session %d", i);
		cr_assert_eq(serve_which(t.c.l[0].port, 4096, 0xf400 + (uint64_t)i, all, 5, w), 0,
			     "%s went to gamma's upstream", w);
	}
	cr_assert_eq(pool_of(&t, 1, 4096, 0xf480, "bravo after the refused SIGHUP"), 1);
	cr_assert_eq(pool_of(&t, 2, 4096, 0xf481, "charlie after the refused SIGHUP"), 2);
	cr_assert_eq(atomic_load(&g1.accepted), 0, "gamma's upstream saw %d connections",
		     atomic_load(&g1.accepted));
	wait_fds_base(&t.px, 2000, "after the refused SIGHUP");
	three_stop(&t);
	backend_stop(&g1);
}

/* ---- bad files at start: exit 2, naming the file and line ---------------------- */

/* Writes text to a file in a private directory (the test's .fini removes both), runs uproxy
 * --config on it and asserts exit 2 within 5 s, with every one of lines[0..n) named as
 * FILE:LINE (either of each pair) and needle (if any) on stderr. */
static void expect_start_error(const char *text, const int lines[][2], int n, const char *needle,
			       const char *what)
{
	char dir[64], path[128];
	const char *args[] = { "--config", path, NULL };
	struct run_result r;

	conf_dir_make(dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/uproxy.conf", dir);
	file_write_atomic(path, "%s", text);
	run_uproxy(&r, 5000, args);
	cr_assert(r.exited, "%s: uproxy still running after 5 s", what);
	cr_assert_eq(r.code, 2, "%s: exit %d, want 2; stderr:\n%s", what, r.code, r.err);
	for (int i = 0; i < n; i++)
		cr_assert(text_names_line(r.err, path, lines[i][0]) ||
				  text_names_line(r.err, path, lines[i][1]),
			  "%s: stderr does not name %s:%d:\n%s", what, path, lines[i][0], r.err);
	if (needle)
		cr_assert_not_null(strstr(r.err, needle), "%s: stderr does not name '%s':\n%s",
				   what, needle, r.err);
	run_result_free(&r);
}

/* A file of two good listeners (on ports nobody listens on: they exit before binding) with
 * more inside bravo's section (bravo_extra) and after it (tail). */
static char *two_listeners(const char *bravo_extra, const char *tail)
{
	char *text = NULL;
	size_t len = 0;
	FILE *f = open_memstream(&text, &len);

	cr_assert_not_null(f);
	fprintf(f, "# written by test_listeners.c\nworkers 1\n\n[pool shared]\n"
		"upstream 127.0.0.1:9\n\n"
		"[listener alpha]\nlisten 127.0.0.1:%u\nupstream 127.0.0.1:9\n\n"
		"[listener bravo]\nlisten 127.0.0.1:%u\npool shared\n%s%s",
		free_port(), free_port(), bravo_extra ? bravo_extra : "", tail ? tail : "");
	cr_assert_eq(fclose(f), 0);
	return text;
}

/* Listeners charlie on host_c:P and delta on host_d:P (one free port P): exit 2 naming both
 * (their section or listen lines). */
static void expect_two_on_one(const char *host_c, const char *host_d, const char *what)
{
	char tail[160], want[80], *text;
	uint16_t p = free_port();
	int lines[2][2];

	snprintf(tail, sizeof(tail), "\n[listener charlie]\nlisten %s:%u\n"
		 "upstream 127.0.0.1:9\n\n[listener delta]\nlisten %s:%u\npool shared\n", host_c, p,
		 host_d, p);
	text = two_listeners(NULL, tail);
	snprintf(want, sizeof(want), "listen %s:%u", host_c, p);
	lines[0][0] = text_line_of(text, "[listener charlie]");
	lines[0][1] = text_line_of(text, want);
	lines[1][0] = text_line_of(text, "[listener delta]");
	lines[1][1] = lines[1][0] + 1;
	expect_start_error(text, lines, 2, NULL, what);
	free(text);
}

/* Two listeners on one address: exit 2 naming both. */
Test(listeners, start_duplicate_address, .timeout = 30, .fini = conf_dir_remove)
{
	expect_two_on_one("127.0.0.1", "127.0.0.1", "two listeners on one address");
}

/* One address spelled two ways (localhost:P, 127.0.0.1:P) passes the text check but is caught
 * once the names are resolved, before anything is bound: exit 2 naming both. */
Test(listeners, start_same_address_other_spelling, .timeout = 30, .fini = conf_dir_remove)
{
	expect_two_on_one("localhost", "127.0.0.1", "localhost:P and 127.0.0.1:P");
}

/* An unknown key in a section: exit 2 naming its line and the key. */
Test(listeners, start_unknown_key_in_section, .timeout = 30, .fini = conf_dir_remove)
{
	char *text;
	int lines[1][2];

	text = two_listeners("frobnicate 7\n", NULL);
	lines[0][0] = lines[0][1] = text_line_of(text, "frobnicate");
	expect_start_error(text, lines, 1, "frobnicate", "an unknown key in a section");
	free(text);
}

/* A listener without upstream or pool: exit 2 naming its section line. */
Test(listeners, start_listener_without_upstream, .timeout = 30, .fini = conf_dir_remove)
{
	char tail[96], *text;
	int lines[1][2];

	snprintf(tail, sizeof(tail), "\n[listener charlie]\nlisten 127.0.0.1:%u\n"
		 "idle-timeout 5000\n", free_port());
	text = two_listeners(NULL, tail);
	lines[0][0] = lines[0][1] = text_line_of(text, "[listener charlie]");
	expect_start_error(text, lines, 1, NULL, "a listener without upstream or pool");
	free(text);
}

/* A global-only key (workers) in a section: exit 2 naming its line. */
Test(listeners, start_global_key_in_section, .timeout = 30, .fini = conf_dir_remove)
{
	char *text;
	int lines[1][2];

	text = two_listeners("workers 2\n", NULL);
	lines[0][0] = lines[0][1] = text_line_of(text, "workers 2");
	expect_start_error(text, lines, 1, "workers", "'workers' inside a section");
	free(text);
}

/* The same listener name twice: exit 2 naming the second. */
Test(listeners, start_duplicate_listener_name, .timeout = 30, .fini = conf_dir_remove)
{
	char tail[96], *text, *second;
	int lines[1][2];

	snprintf(tail, sizeof(tail), "\n[listener alpha]\nlisten 127.0.0.1:%u\n"
		 "upstream 127.0.0.1:9\n", free_port());
	text = two_listeners(NULL, tail);
	second = strstr(strstr(text, "[listener alpha]") + 1, "[listener alpha]");
	cr_assert_not_null(second);
	lines[0][0] = 1;
	for (const char *c = text; c < second; c++)
		lines[0][0] += *c == '\n';
	lines[0][1] = lines[0][0];
	expect_start_error(text, lines, 1, "alpha", "the listener name alpha twice");
	free(text);
}

/* A listener on a pool that is not defined: exit 2 naming it. */
Test(listeners, start_undefined_pool, .timeout = 30, .fini = conf_dir_remove)
{
	char tail[96], *text;
	int lines[1][2];

	snprintf(tail, sizeof(tail), "\n[listener charlie]\nlisten 127.0.0.1:%u\npool nosuch\n",
		 free_port());
	text = two_listeners(NULL, tail);
	lines[0][0] = text_line_of(text, "pool nosuch");
	lines[0][1] = text_line_of(text, "[listener charlie]");
	expect_start_error(text, lines, 1, "nosuch", "a listener on an undefined pool");
	free(text);
}

/* A section of an unknown kind: exit 2 naming its line. */
Test(listeners, start_unknown_section, .timeout = 30, .fini = conf_dir_remove)
{
	char *text;
	int lines[1][2];

	text = two_listeners(NULL, "\n[frontend charlie]\nlisten 127.0.0.1:1\n");
	lines[0][0] = lines[0][1] = text_line_of(text, "[frontend charlie]");
	expect_start_error(text, lines, 1, "frontend", "an unknown section kind");
	free(text);
}
