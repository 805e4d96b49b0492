/* Backup upstreams through the real binary: a `,backup` upstream gets nothing while its primary
 * is up; when the primary dies every client is still served (through --retries) by the backup,
 * the move is logged once and uproxy_pool_backup_active turns 1; when the primary comes back
 * (noticed by --health-interval, or by the half-open probe after --fail-timeout) traffic returns
 * to it, logged once, and the gauge turns 0. While the primary stays dead its half-open probes
 * must not flap the state.
 *
 * Which upstream served a session is read from the bytes the echo backends received: the
 * active health checks connect to every upstream, backups included, but send nothing, so accept
 * counts would include them. The proxies run one worker (each worker has its own pool and
 * logs its own moves) and start without the harness's readiness probe, which would be one more
 * session, or a failed connect, on some upstream. */
#include "harness.h"

#include <criterion/criterion.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Bytes each session sends (and gets back). */
#define SESSION_BYTES 64

/* The design figure for noticing a restarted primary: one --health-interval. */
#define HEALTH_MS 200
/* Scheduling on a loaded 2-CPU machine, one loopback probe connect, and the session that
 * looks: well under this. */
#define MARGIN_MS 300

/* ---- local helpers ------------------------------------------------------ */

/* The primary (index 0) and the backup (index 1). */
struct pair {
	struct backend *b[2];
	unsigned long long prim_bytes; /* the primary's bytes before it was stopped */
};

/* Bytes backend i of the pair has received so far. */
static unsigned long long bytes_of(const struct pair *pr, int i)
{
	return atomic_load(&pr->b[i]->bytes_in);
}

/* One session: connect, a SESSION_BYTES echo round trip, close. Asserts it was served (within
 * the retries rule: no client error at all) and returns which of the pair received its bytes:
 * 0 the primary, 1 the backup. */
static int serve_where(struct pair *pr, uint16_t port, uint64_t seed, const char *what)
{
	unsigned long long before[2] = { bytes_of(pr, 0), bytes_of(pr, 1) }, d[2];
	int fd = tcp_connect(AF_INET, port, 2000);

	cr_assert_geq(fd, 0, "%s: connect to the proxy: %s", what, strerror(errno));
	cr_assert(echo_roundtrip(fd, seed, SESSION_BYTES, 3000),
		  "%s: the %d-byte echo through the proxy failed (a client error)", what,
		  SESSION_BYTES);
	close(fd);
	for (int i = 0; i < 2; i++)
		d[i] = bytes_of(pr, i) - before[i];
	cr_assert((d[0] == SESSION_BYTES && d[1] == 0) || (d[0] == 0 && d[1] == SESSION_BYTES),
		  "%s: the primary received %llu bytes, the backup %llu, want %d on one of them",
		  what, d[0], d[1], SESSION_BYTES);
	return d[0] ? 0 : 1;
}

/* What both tests set up: the primary and the backup, the --stats port, the proxy's arguments
 * and the log lines that name them. */
struct rig {
	struct backend prim, back;
	struct pair pr;
	uint16_t pport, sport;
	char up[48], ub[48], stats[48], to_backup[160], to_primary[160], failed[96];
	const char *args[20];
};

/* Binds both backends (not yet listening), writes the strings and the proxy's arguments: the
 * pool of both, one worker, --fail-threshold 1, --retries 1, --stats, debug logs, and how the
 * dead primary is probed (opt val: --health-interval or --fail-timeout). The primary sets
 * SO_REUSEADDR from the start: its connections closed when it is stopped (health probes in
 * flight) linger in TIME_WAIT, and only sockets that all set it let the restarted primary bind
 * its port again. */
static void rig_init(struct rig *r, const char *opt, const char *val)
{
	const char *args[] = { "-u", r->up, "-u", r->ub,
			       "--fail-threshold", "1", "--retries", "1",
			       "--workers", "1", "--stats", r->stats,
			       "--log-level", "debug", opt, val,
			       NULL };

	backend_bind_on(&r->prim, free_port());
	backend_bind(&r->back, AF_INET);
	r->pr = (struct pair){ .b = { &r->prim, &r->back } };
	r->pport = r->prim.port;
	r->sport = free_port();
	snprintf(r->up, sizeof(r->up), "127.0.0.1:%u", r->prim.port);
	snprintf(r->ub, sizeof(r->ub), "127.0.0.1:%u,backup", r->back.port);
	snprintf(r->stats, sizeof(r->stats), "127.0.0.1:%u", r->sport);
	snprintf(r->to_backup, sizeof(r->to_backup),
		 "pool default: every primary is down; traffic moves to backup(s) 127.0.0.1:%u",
		 r->back.port);
	snprintf(r->to_primary, sizeof(r->to_primary),
		 "pool default: primary 127.0.0.1:%u is up again; traffic moves back from the "
		 "backups",
		 r->prim.port);
	snprintf(r->failed, sizeof(r->failed), "connect to 127.0.0.1:%u failed", r->prim.port);
	memcpy(r->args, args, sizeof(args));
}

#define GAUGE "uproxy_pool_backup_active{pool=\"default\"}"

/* ---- tests ----------------------------------------------------------------- */

Test(backup, takes_over_and_hands_back, .timeout = 40)
{
	static struct rig r;
	struct proxy px;
	uint64_t t0, ms;
	int n;

	rig_init(&r, "--health-interval", "200");
	backend_run(&r.prim, BK_ECHO);
	backend_run(&r.back, BK_ECHO);
	proxy_spawn_listen(&px, "127.0.0.1", r.prim.port, r.args, NULL, NULL);

	/* 1: the primary is up: every session is its, the backup receives nothing. */
	metrics_wait(r.sport, GAUGE, 0, 1000, "primary up");
	for (int i = 0; i < 200; i++) {
		char what[64];

		snprintf(what, sizeof(what), "primary up, session %d", i);
		cr_assert_eq(serve_where(&r.pr, px.port, 0x1000 + (uint64_t)i, what), 0,
			     "%s went to the backup", what);
	}
	cr_assert_eq(bytes_of(&r.pr, 1), 0, "the backup received %llu bytes with the primary up",
		     bytes_of(&r.pr, 1));
	cr_assert_eq(proxy_log_count(&px, r.to_backup), 0,
		     "moved to the backups with the primary up");

	/* 2: the primary dies. --fail-threshold 1: its first failed connect (or a failed health
	 * check) marks it down; that session retries on the backup; every session is served. */
	r.pr.prim_bytes = bytes_of(&r.pr, 0);
	backend_stop(&r.prim);
	for (int i = 0; i < 100; i++) {
		char what[64];

		snprintf(what, sizeof(what), "primary dead, session %d", i);
		cr_assert_eq(serve_where(&r.pr, px.port, 0x2000 + (uint64_t)i, what), 1,
			     "%s: served by the dead primary?", what);
	}
	n = proxy_log_count(&px, r.failed);
	cr_assert_leq(n, 1,
		      "100 sessions tried the dead primary %d times, want at most once "
		      "(--fail-threshold 1 marks it down at its first failure)",
		      n);
	cr_assert_geq(proxy_wait_log(&px, r.to_backup, 0, 1000), 0,
		      "the primary is dead and the backup serves, but the log has no '%s'",
		      r.to_backup);
	metrics_wait(r.sport, GAUGE, 1, 1000, "every primary down");
	/* more sessions and failed health checks later: still one line */
	for (int i = 0; i < 20; i++) {
		char what[64];

		snprintf(what, sizeof(what), "still on the backup, session %d", i);
		cr_assert_eq(serve_where(&r.pr, px.port, 0x3000 + (uint64_t)i, what), 1);
		sleep_ms(25);
	}
	n = proxy_log_count(&px, r.to_backup);
	cr_assert_eq(n, 1, "'%s' logged %d times, want once", r.to_backup, n);
	cr_assert_eq(proxy_log_count(&px, r.to_primary), 0, "moved back while the primary is dead");

	/* 3: the primary comes back on its port: within one health interval + margin the
	 * traffic is on it again. */
	backend_bind_on(&r.prim, r.pport);
	backend_run(&r.prim, BK_ECHO);
	t0 = now_ms();
	for (int i = 0;; i++) {
		char what[64];

		snprintf(what, sizeof(what), "primary restarted, session %d", i);
		if (serve_where(&r.pr, px.port, 0x4000 + (uint64_t)i, what) == 0)
			break;
		cr_assert_leq(now_ms() - t0, HEALTH_MS + MARGIN_MS,
			      "the primary listens again, yet %llu ms later sessions still go to "
			      "the backup (--health-interval %d, margin %d ms)",
			      (unsigned long long)(now_ms() - t0), HEALTH_MS, MARGIN_MS);
		sleep_ms(10);
	}
	ms = now_ms() - t0;
	cr_log_info("traffic back on the primary %llu ms after it listened again",
		    (unsigned long long)ms);
	cr_assert_leq(ms, HEALTH_MS + MARGIN_MS, "back on the primary after %llu ms, want ≤ %d",
		      (unsigned long long)ms, HEALTH_MS + MARGIN_MS);
	cr_assert_geq(proxy_wait_log(&px, r.to_primary, 0, 1000), 0,
		      "traffic is back on the primary, but the log has no '%s'", r.to_primary);
	metrics_wait(r.sport, GAUGE, 0, 1000, "primary up again");
	unsigned long long bb = bytes_of(&r.pr, 1);

	for (int i = 0; i < 100; i++) {
		char what[64];

		snprintf(what, sizeof(what), "primary back, session %d", i);
		cr_assert_eq(serve_where(&r.pr, px.port, 0x5000 + (uint64_t)i, what), 0,
			     "%s went to the backup", what);
	}
	cr_assert_eq(bytes_of(&r.pr, 1), bb,
		     "the backup received bytes after the primary "
		     "came back");
	cr_assert_eq(proxy_log_count(&px, r.to_primary), 1, "'%s' not logged exactly once",
		     r.to_primary);
	cr_assert_eq(proxy_log_count(&px, r.to_backup), 1, "'%s' logged again", r.to_backup);
	assert_proxy_idle(&px, 2000, "after the sessions");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&r.prim);
	backend_stop(&r.back);
}

/* Passive health only: the dead primary is probed (half-open) every --fail-timeout; each probe
 * fails and its session retries on the backup, with no flapping log line; once the primary
 * listens again the next probe succeeds and the traffic moves back. */
Test(backup, half_open_probes_do_not_flap, .timeout = 40)
{
	static struct rig r;
	struct proxy px;
	uint64_t t_dead, t0, ms;
	int n, probes;

	rig_init(&r, "--fail-timeout", "1");
	backend_run(&r.back, BK_ECHO);
	/* the primary bound but not listening: refused from the start */
	proxy_spawn_listen(&px, "127.0.0.1", r.back.port, r.args, NULL, NULL);

	/* The first session fails on the primary (marked down at once) and retries. */
	t_dead = now_ms();
	cr_assert_eq(serve_where(&r.pr, px.port, 0x6000, "first session"), 1);
	cr_assert_geq(proxy_wait_log(&px, r.to_backup, 0, 1000), 0, "no '%s'", r.to_backup);
	metrics_wait(r.sport, GAUGE, 1, 1000, "primary refused");
	/* 2.5 s of sessions: a half-open probe at ~1 s and ~2 s, each failing, each served. */
	for (int i = 0; now_ms() < t_dead + 2500; i++) {
		char what[64];

		snprintf(what, sizeof(what), "primary still dead, session %d", i);
		cr_assert_eq(serve_where(&r.pr, px.port, 0x7000 + (uint64_t)i, what), 1);
		sleep_ms(20);
	}
	probes = proxy_log_count(&px, r.failed);
	cr_assert(probes >= 2 && probes <= 3,
		  "in 2.5 s with --fail-timeout 1 the dead primary was "
		  "tried %d times, want 2-3 (the first session, then a probe per second)",
		  probes);
	n = proxy_log_count(&px, r.to_primary);
	cr_assert_eq(n, 0, "failed half-open probes logged '%s' %d times", r.to_primary, n);
	n = proxy_log_count(&px, r.to_backup);
	cr_assert_eq(n, 1, "failed half-open probes logged '%s' %d times, want once", r.to_backup,
		     n);
	metrics_wait(r.sport, GAUGE, 1, 0, "after the failed probes");

	/* The primary listens: the next probe (≤ --fail-timeout later) brings the traffic back. */
	backend_stop(&r.prim); /* frees its port: it was bound, never listening */
	backend_bind_on(&r.prim, r.pport);
	backend_run(&r.prim, BK_ECHO);
	t0 = now_ms();
	for (int i = 0;; i++) {
		char what[64];

		snprintf(what, sizeof(what), "primary listening, session %d", i);
		if (serve_where(&r.pr, px.port, 0x8000 + (uint64_t)i, what) == 0)
			break;
		cr_assert_leq(now_ms() - t0, 1000 + MARGIN_MS,
			      "the primary listens again, yet %llu ms later (--fail-timeout 1) "
			      "sessions still go to the backup",
			      (unsigned long long)(now_ms() - t0));
		sleep_ms(10);
	}
	ms = now_ms() - t0;
	cr_log_info("half-open probe brought the traffic back %llu ms after the primary listened",
		    (unsigned long long)ms);
	cr_assert_geq(proxy_wait_log(&px, r.to_primary, 0, 1000), 0, "no '%s'", r.to_primary);
	metrics_wait(r.sport, GAUGE, 0, 1000, "primary back");
	for (int i = 0; i < 20; i++) {
		char what[64];

		snprintf(what, sizeof(what), "primary back, session %d", i);
		cr_assert_eq(serve_where(&r.pr, px.port, 0x9000 + (uint64_t)i, what), 0);
	}
	cr_assert_eq(proxy_log_count(&px, r.to_primary), 1);
	assert_proxy_idle(&px, 2000, "after the sessions");
	cr_assert(proxy_stop(&px), "proxy did not exit 0 on SIGTERM");
	backend_stop(&r.prim);
	backend_stop(&r.back);
}
