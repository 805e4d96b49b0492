/* main: start-up, control and exit. Parses the command line, raises the fd limit, resolves the
 * upstreams, opens every worker's listeners and starts the worker threads; then, as the control
 * thread, re-reads the config on SIGHUP and re-resolves upstream names, handing new pools to
 * the workers. Exit status: 0 after a stop signal, 2 for usage errors, 1 for run-time failures.
 * Never runs data-path code. */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pwd.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <unistd.h>

#include "uproxy/addr.h"
#include "uproxy/config.h"
#include "uproxy/log.h"
#include "uproxy/listener.h"
#include "uproxy/worker.h"

/* fds kept aside from the per-session budget: rings, signalfd, eventfds, listeners, stdio;
 * each worker past the first sets 8 more aside. */
#define FD_RESERVE 32

/* Start-up hand-shake between main and the worker threads: each reports its set-up result,
 * then waits to be told whether every worker came up (run) or not (exit quietly). */
struct startup {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int reported;
	int failed;
	bool go;
	bool decided;
	char why[512];
};

struct thread_arg {
	struct worker *w;
	struct startup *st;
	const struct config *cfg;
	uint32_t max_sessions;
	int status;
};

/* Workers still running; the control loop ends when it reaches 0. */
static atomic_int running_workers;

/* How often the control thread looks at whether the workers are done. */
#define CONTROL_POLL_MS 100

/* Appends spec to out[0..*n) unless its address is there already (the first weight wins). */
static void pool_add(struct backend_spec *out, int *n, int max, const struct backend_spec *spec)
{
	for (int j = 0; j < *n; j++) {
		if (addr_equal(&out[j].addr, &spec->addr))
			return;
	}
	if (*n < max)
		out[(*n)++] = *spec;
}

/* Every address every upstream of pool cp names, without duplicates (first weight wins).
 * Returns the count, or -1 with why when a name does not resolve and strict is set; when not
 * strict, an entry that fails keeps the addresses it had in prev (re-resolution keeps a flaky
 * DNS from emptying the pool). */
static int resolve_pool(const struct config_pool *cp, struct backend_spec *out, int max,
			const struct backend_spec *prev, int nprev, bool strict, char *why,
			size_t whylen)
{
	int n = 0;

	for (uint32_t u = 0; u < cp->nupstreams; u++) {
		const struct config_upstream *cu = &cp->upstreams[u];
		struct addr addrs[ADDR_MAX_RESOLVED];
		int k = addr_resolve(&cu->hp, addrs, ADDR_MAX_RESOLVED, why, whylen);

		if (k < 0) {
			if (strict)
				return -1;
			log_warn("pool %s: re-resolving upstream '%s' failed (%s); keeping its "
				 "addresses",
				 cp->name, cu->hp.host, why);
			/* The previous pool does not say which entry an address came from: every
			 * previous address on this port is kept (sin_port and sin6_port share
			 * their offset). */
			for (int i = 0; i < nprev; i++) {
				if (prev[i].addr.u.sa.sa_family != AF_UNIX &&
				    ntohs(prev[i].addr.u.in4.sin_port) == cu->hp.port)
					pool_add(out, &n, max, &prev[i]);
			}
			continue;
		}
		for (int i = 0; i < k; i++)
			pool_add(out, &n, max,
				 &(struct backend_spec){ .addr = addrs[i],
							 .weight = cu->weight,
							 .backup = cu->backup });
	}
	return n;
}

static bool same_pool(const struct backend_spec *a, int na, const struct backend_spec *b, int nb)
{
	if (na != nb)
		return false;
	for (int i = 0; i < na; i++) {
		if (a[i].weight != b[i].weight || a[i].backup != b[i].backup ||
		    !addr_equal(&a[i].addr, &b[i].addr))
			return false;
	}
	return true;
}

static void log_pool(const char *name, const struct backend_spec *specs, int n)
{
	char buf[ADDR_STRLEN];

	for (int i = 0; i < n; i++)
		log_info("pool %s: upstream %s weight %u%s", name,
			 addr_format(&specs[i].addr, buf, sizeof(buf)), specs[i].weight,
			 specs[i].backup ? " (backup)" : "");
}

static int fail(const char *why)
{
	fprintf(stderr, "uproxy: %s\n", why);
	return 1;
}

/* Raises the soft open-file limit to the hard limit; returns the resulting soft limit. */
static rlim_t raise_nofile(void)
{
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return 1024;
	if (rl.rlim_cur < rl.rlim_max) {
		rlim_t old = rl.rlim_cur;

		rl.rlim_cur = rl.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
			log_warn("cannot raise the open-file limit from %llu to %llu: %s",
				 (unsigned long long)old, (unsigned long long)rl.rlim_max,
				 strerror(errno));
			rl.rlim_cur = old;
		}
	}
	return rl.rlim_cur;
}

/* Blocks SIGINT/SIGTERM/SIGHUP in every thread (before any starts) and returns a signalfd for
 * SIGINT/SIGTERM, which worker 0 reads through its ring. */
static int open_signalfd(void)
{
	sigset_t set;

	sigemptyset(&set);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGHUP); /* taken by the control thread with sigtimedwait */
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return -1;
	sigdelset(&set, SIGHUP);
	return signalfd(-1, &set, SFD_CLOEXEC);
}

static uint32_t cpu_count(void)
{
	cpu_set_t set;

	if (sched_getaffinity(0, sizeof(set), &set) == 0 && CPU_COUNT(&set) > 0)
		return (uint32_t)CPU_COUNT(&set);
	return 1;
}

static void *worker_thread(void *p)
{
	struct thread_arg *a = p;
	struct startup *st = a->st;
	char why[512];
	int rc;

	rc = worker_init(a->w, a->cfg, a->max_sessions, why, sizeof(why));
	pthread_mutex_lock(&st->mu);
	st->reported++;
	if (rc < 0 && st->failed++ == 0)
		snprintf(st->why, sizeof(st->why), "%s", why);
	pthread_cond_broadcast(&st->cv);
	while (!st->decided)
		pthread_cond_wait(&st->cv, &st->mu);
	pthread_mutex_unlock(&st->mu);
	if (rc < 0) {
		/* What worker_init had set up before it failed is freed here too. */
		worker_destroy(a->w);
		a->status = 1;
		atomic_fetch_sub(&running_workers, 1);
		return NULL;
	}
	if (st->go)
		a->status = worker_run(a->w);
	worker_destroy(a->w);
	atomic_fetch_sub(&running_workers, 1);
	return NULL;
}

/* --user: switch to an unprivileged user once everything privileged (binding, opening the
 * access log, raising limits) is done, before any thread starts. Never continues as root. */
static int drop_privileges(const char *name, char *err, size_t errlen)
{
	struct passwd *pw = getpwnam(name);

	if (pw == NULL) {
		snprintf(err, errlen, "--user %s: no such user", name);
		return -1;
	}
	if (pw->pw_uid == 0) {
		snprintf(err, errlen, "--user %s: that is root; name an unprivileged user", name);
		return -1;
	}
	if (initgroups(name, pw->pw_gid) < 0 || setgid(pw->pw_gid) < 0 || setuid(pw->pw_uid) < 0) {
		snprintf(err, errlen, "--user %s: cannot switch to it: %s%s", name, strerror(errno),
			 errno == EPERM ? " (only root can change user)" : "");
		return -1;
	}
	if (setuid(0) == 0 || getuid() == 0 || geteuid() == 0) {
		snprintf(err, errlen, "--user %s: still root after switching; refusing to run",
			 name);
		return -1;
	}
	log_info("running as user %s (uid %u, gid %u)", name, (unsigned)pw->pw_uid,
		 (unsigned)pw->pw_gid);
	return 0;
}

/* Global options SIGHUP cannot change: they shape the threads and memory. */
static void warn_restart_only(const struct config *old, const struct config *new)
{
	if (old->workers != new->workers || old->buffers != new->buffers ||
	    old->buffer_size != new->buffer_size || old->max_conns != new->max_conns ||
	    old->log_level != new->log_level || old->backend != new->backend ||
	    strcmp(old->user, new->user) != 0 || old->stats.port != new->stats.port ||
	    strcmp(old->stats.host, new->stats.host) != 0 ||
	    old->resolve_interval_s != new->resolve_interval_s)
		log_warn(
			"SIGHUP: global options changed (workers, buffers, buffer-size, max-conns, "
			"log-level, backend, user, stats, resolve-interval); they need a restart, "
			"the listeners and pools are applied now");
}

/* A log file kept open for the life of the process (listeners name them by path). */
struct logfile {
	char path[PATH_MAX];
	int fd;
};

#define MAX_LOGFILES 64

/* What the process runs: its configuration and each pool's resolved addresses (by the
 * config's pool index). */
struct running {
	struct config *cfg;
	struct backend_spec *specs[CONFIG_MAX_POOLS];
	int nspecs[CONFIG_MAX_POOLS];
	/* Per config listener: its unix socket file as created (listener_unlink's identity). */
	struct listener unix_l[CONFIG_MAX_LISTENERS];
};

/* Everything main sets up, so that each step below is one named function. */
struct app {
	struct config *cfg; /* the start-up configuration: its global options hold for good */
	enum loop_backend backend_asked; /* --backend as given (cfg's is the one chosen) */
	struct running run;
	uint32_t nworkers, per_worker;
	rlim_t nofile;
	struct worker *workers;
	struct thread_arg *args;
	pthread_t *threads;
	int started;
	struct logfile logs[MAX_LOGFILES];
	int nlogs;
	int act[WORKER_MAX_LISTENERS], nact; /* sockets systemd passed */
	struct sdnotify sn;
	struct startup st;
	char err[8192];
};

/* Frees what r holds; its config too unless it is keep (the start-up one). */
static void running_free(struct running *r, const struct config *keep)
{
	for (int i = 0; i < CONFIG_MAX_POOLS; i++) {
		free(r->specs[i]);
		r->specs[i] = NULL;
		r->nspecs[i] = 0;
	}
	if (r->cfg != keep)
		free(r->cfg);
	r->cfg = NULL;
}

/* The fd of an access-log path ("-": stdout), opened on first use. -1 with err. */
static int logfile_fd(struct app *a, const char *path)
{
	int fd;

	if (path[0] == '\0')
		return -1;
	if (strcmp(path, "-") == 0)
		return STDOUT_FILENO;
	for (int i = 0; i < a->nlogs; i++)
		if (strcmp(a->logs[i].path, path) == 0)
			return a->logs[i].fd;
	if (a->nlogs == MAX_LOGFILES) {
		snprintf(a->err, sizeof(a->err), "more than %d access-log files", MAX_LOGFILES);
		return -2;
	}
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd < 0) {
		snprintf(a->err, sizeof(a->err), "cannot open access log '%.300s': %s", path,
			 strerror(errno));
		return -2;
	}
	snprintf(a->logs[a->nlogs].path, PATH_MAX, "%s", path);
	a->logs[a->nlogs++].fd = fd;
	return fd;
}

/* Opens listener l's sockets for every worker into plans (nsocks set). Socket-activated
 * sockets go to the first listener. Returns 0 or -1 with a->err. */
static int bind_listener(struct app *a, const struct config_listener *l, bool activated,
			 struct worker_plan **plans, uint32_t li)
{
	char why[512];

	for (uint32_t w = 0; w < a->nworkers; w++) {
		struct plan_svc *ps = &plans[w]->svcs[li];
		int n;

		if (activated)
			n = listener_adopt(a->act, a->nact, w == 0, ps->socks, why, sizeof(why));
		else if (l->listen.unix_sock && w == 0)
			n = listener_open_unix(&l->listen, l->unix_mode, &ps->socks[0], why,
					       sizeof(why));
		else if (l->listen.unix_sock)
			/* One unix socket (no SO_REUSEPORT): every worker accepts on a dup. */
			n = listener_dup(&plans[0]->svcs[li].socks[0], &ps->socks[0], why,
					 sizeof(why));
		else
			n = listener_open(&l->listen, ps->socks, SVC_MAX_SOCKS, why, sizeof(why));
		if (n < 0) {
			snprintf(a->err, sizeof(a->err), "%s: listener '%s': %s", l->where, l->name,
				 why);
			return -1;
		}
		ps->nsocks = n;
	}
	return 0;
}

/* Two listeners on one address spelled two ways (localhost:80 and 127.0.0.1:80) pass the
 * config's text check, and with SO_REUSEPORT both binds would succeed and split the clients:
 * compared here once the names are resolved. Returns 0, or -1 with err. */
static int listeners_overlap(const struct config *cfg, char *err, size_t errlen)
{
	static struct addr addrs[CONFIG_MAX_LISTENERS][ADDR_MAX_RESOLVED];
	int n[CONFIG_MAX_LISTENERS];
	char why[256], a[ADDR_STRLEN];

	for (uint32_t i = 0; i < cfg->nlisteners; i++) {
		const struct hostport *hp = &cfg->listeners[i].listen;

		n[i] = 0;
		if (hp->any || hp->unix_sock || hp->port == 0)
			continue;
		/* A name that does not resolve is the bind's error to report (exit 1). */
		n[i] = addr_resolve(hp, addrs[i], ADDR_MAX_RESOLVED, why, sizeof(why));
		if (n[i] < 0)
			n[i] = 0;
		for (uint32_t j = 0; j < i; j++)
			for (int x = 0; x < n[i]; x++)
				for (int y = 0; y < n[j]; y++)
					if (addr_equal(&addrs[i][x], &addrs[j][y])) {
						snprintf(err, errlen,
							 "%s: listener '%s' listens on %s, as does "
							 "listener '%s' (%s)",
							 cfg->listeners[i].where,
							 cfg->listeners[i].name,
							 addr_format(&addrs[i][x], a, sizeof(a)),
							 cfg->listeners[j].name,
							 cfg->listeners[j].where);
						return -1;
					}
	}
	return 0;
}

static bool same_hostport(const struct hostport *x, const struct hostport *y)
{
	return x->port == y->port && x->any == y->any && x->unix_sock == y->unix_sock &&
	       strcmp(x->host, y->host) == 0;
}

/* Builds one plan per worker for next: resolves its pools (strictly for a pool that is new;
 * an old one keeps addresses that fail to re-resolve), binds the listeners that are new or
 * moved, opens new access logs. prev is what runs now (NULL at start). On success plans[]
 * and nr are filled; on failure everything new is closed and a->err says why. */
static int build_plans(struct app *a, const struct config *next, const struct running *prev,
		       struct worker_plan **plans, struct running *nr)
{
	static struct backend_spec buf[BACKEND_MAX];
	char why[512];

	memset(plans, 0, a->nworkers * sizeof(*plans));
	for (uint32_t w = 0; w < a->nworkers; w++) {
		plans[w] = calloc(1, sizeof(*plans[w]));
		if (plans[w] == NULL) {
			snprintf(a->err, sizeof(a->err), "out of memory");
			goto fail;
		}
	}
	for (uint32_t i = 0; i < next->npools; i++) {
		const struct config_pool *cp = &next->pools[i];
		int pi = prev ? config_find_pool(prev->cfg, cp->name) : -1;
		int n = resolve_pool(cp, buf, BACKEND_MAX, pi >= 0 ? prev->specs[pi] : NULL,
				     pi >= 0 ? prev->nspecs[pi] : 0, pi < 0, why, sizeof(why));

		if (n <= 0) {
			snprintf(a->err, sizeof(a->err), "%s: pool '%s': %s", cp->where, cp->name,
				 n < 0 ? why : "no upstream address");
			goto fail;
		}
		nr->specs[i] = malloc((size_t)n * sizeof(*buf));
		if (nr->specs[i] == NULL) {
			snprintf(a->err, sizeof(a->err), "out of memory");
			goto fail;
		}
		memcpy(nr->specs[i], buf, (size_t)n * sizeof(*buf));
		nr->nspecs[i] = n;
		for (uint32_t w = 0; w < a->nworkers; w++) {
			struct plan_pool *pp = &plans[w]->pools[i];

			pp->cfg = *cp;
			pp->specs = malloc((size_t)n * sizeof(*buf));
			if (pp->specs == NULL) {
				snprintf(a->err, sizeof(a->err), "out of memory");
				goto fail;
			}
			memcpy(pp->specs, buf, (size_t)n * sizeof(*buf));
			pp->nspecs = n;
		}
		for (uint32_t w = 0; w < a->nworkers; w++)
			plans[w]->npools = i + 1;
	}
	for (uint32_t i = 0; i < next->nlisteners; i++) {
		const struct config_listener *l = &next->listeners[i];
		int old = prev ? config_find_listener(prev->cfg, l->name) : -1;
		bool keep =
			old >= 0 && same_hostport(&prev->cfg->listeners[old].listen, &l->listen);
		int fd = logfile_fd(a, l->access_log);

		if (fd == -2)
			goto fail;
		/* systemd's sockets serve the first listener of the start-up config for good. */
		bool activated = a->nact > 0 && strcmp(l->name, a->cfg->listeners[0].name) == 0 &&
				 (prev == NULL ? i == 0 : keep);
		bool shared = activated || l->listen.unix_sock;

		if (a->nworkers > 1 && (l->max_conns_per_client || l->rate_per_client) &&
		    (l->accept_proxy || shared))
			log_warn("listener %s: with %s, clients cannot be steered to workers by "
				 "their "
				 "address: per-client limits apply in each of the %u workers",
				 l->name,
				 l->accept_proxy       ? "accept-proxy"
				 : l->listen.unix_sock ? "a unix socket"
						       : "socket activation",
				 a->nworkers);
		for (uint32_t w = 0; w < a->nworkers; w++) {
			plans[w]->svcs[i].cfg = *l;
			plans[w]->svcs[i].alog_fd = fd;
			plans[w]->svcs[i].nsocks = keep ? -1 : 0;
			plans[w]->svcs[i].shared_socks = shared;
			plans[w]->nsvcs = i + 1;
		}
		if (!keep && bind_listener(a, l, activated, plans, i) < 0)
			goto fail;
		if (keep && l->listen.unix_sock &&
		    l->unix_mode != prev->cfg->listeners[old].unix_mode &&
		    prev->unix_l[old].unix_file && chmod(l->listen.host, l->unix_mode) < 0)
			log_warn("listener %s: cannot chmod %s to %04o: %s", l->name,
				 l->listen.host, l->unix_mode, strerror(errno));
		if (keep)
			nr->unix_l[i] = prev->unix_l[old];
		else if (l->listen.unix_sock && !activated)
			nr->unix_l[i] = plans[0]->svcs[i].socks[0];
		else
			nr->unix_l[i].unix_file = false;
	}
	return 0;
fail:
	for (uint32_t w = 0; w < a->nworkers; w++) {
		worker_plan_free(plans[w]);
		plans[w] = NULL;
	}
	for (int i = 0; i < CONFIG_MAX_POOLS; i++) {
		free(nr->specs[i]);
		nr->specs[i] = NULL;
	}
	return -1;
}

/* A unix listener's socket file goes with the listener (SIGHUP removal, exit), if it is
 * still the one we created. */
static void unlink_unix(const struct running *r, uint32_t i)
{
	if (r->unix_l[i].unix_file)
		listener_unlink(&r->unix_l[i]);
}

/* Whether every worker has taken the last plan posted to it. */
static bool plans_all_taken(struct app *a)
{
	for (uint32_t i = 0; i < a->nworkers; i++)
		if (!worker_plan_taken(worker_nth(a->workers, i)))
			return false;
	return true;
}

/* SIGHUP: re-reads the config and applies it, or keeps the running one and says why. */
static void reload(struct app *a, int argc, char **argv)
{
	struct config *next = malloc(sizeof(*next));
	struct worker_plan **plans = calloc(a->nworkers, sizeof(*plans));
	struct running nr = { 0 };
	char err[1024];

	if (next == NULL || plans == NULL) {
		log_error("SIGHUP: config not reloaded: out of memory");
		goto failed;
	}
	if (config_parse(next, argc, argv, stdout, err, sizeof(err)) != CONFIG_OK) {
		log_error("SIGHUP: config not reloaded: %s", err);
		goto failed;
	}
	/* The previous plan must be in before the next one is built against it. */
	for (int tries = 0; tries < 100 && !plans_all_taken(a); tries++)
		usleep(10000);
	/* Two spellings of one address (localhost:80, 127.0.0.1:80) pass the config's check. */
	if (listeners_overlap(next, a->err, sizeof(a->err)) < 0 ||
	    build_plans(a, next, &a->run, plans, &nr) < 0) {
		log_error("SIGHUP: config not reloaded: %s", a->err);
		goto failed;
	}
	next->backend = next->backend == a->backend_asked ? a->cfg->backend : next->backend;
	warn_restart_only(a->run.cfg, next);
	for (uint32_t i = 0; i < next->npools; i++) {
		int oi = config_find_pool(a->run.cfg, next->pools[i].name);

		if (oi < 0 ||
		    !same_pool(nr.specs[i], nr.nspecs[i], a->run.specs[oi], a->run.nspecs[oi])) {
			log_info("pool %s: upstream pool changed: %d address(es) now",
				 next->pools[i].name, nr.nspecs[i]);
			log_pool(next->pools[i].name, nr.specs[i], nr.nspecs[i]);
		}
	}
	for (uint32_t i = 0; i < a->run.cfg->nlisteners; i++) {
		const struct config_listener *l = &a->run.cfg->listeners[i];
		int ni = config_find_listener(next, l->name);

		if (ni < 0)
			log_info("SIGHUP: listener %s removed: draining its connections for up to "
				 "%u ms",
				 l->name, l->drain_timeout_ms);
		if (ni < 0 || !same_hostport(&next->listeners[ni].listen, &l->listen))
			unlink_unix(&a->run, i);
	}
	for (uint32_t i = 0; i < next->nlisteners; i++) {
		const struct config_listener *l = &next->listeners[i];
		int oi = config_find_listener(a->run.cfg, l->name);
		char hp[ADDR_HOST_MAX + 16];

		addr_format_hostport(&l->listen, hp, sizeof(hp));
		if (oi < 0)
			log_info("SIGHUP: listener %s added on %s", l->name, hp);
		else if (!config_listener_equal(&a->run.cfg->listeners[oi], l))
			log_info("SIGHUP: listener %s changed (%s)", l->name, hp);
	}
	for (uint32_t i = 0; i < a->nworkers; i++) {
		worker_post_plan(worker_nth(a->workers, i), plans[i]);
		plans[i] = NULL;
	}
	running_free(&a->run, a->cfg);
	nr.cfg = next;
	a->run = nr;
	__atomic_fetch_add(&stats_reloads[0], 1, __ATOMIC_RELAXED);
	log_info("SIGHUP: config re-read%s%s: %u listener(s), %u pool(s)",
		 next->config_path[0] ? " from " : "", next->config_path, next->nlisteners,
		 next->npools);
	free(plans);
	return;
failed:
	__atomic_fetch_add(&stats_reloads[1], 1, __ATOMIC_RELAXED);
	free(next);
	free(plans);
}

/* --resolve-interval: re-resolves every pool; hands the workers a plan if any pool changed. */
static void reresolve(struct app *a)
{
	const struct config *cfg = a->run.cfg;
	struct worker_plan **plans;
	struct running nr = { 0 };
	bool changed = false;

	if (!plans_all_taken(a))
		return; /* next time */
	plans = calloc(a->nworkers, sizeof(*plans));
	if (plans == NULL || build_plans(a, cfg, &a->run, plans, &nr) < 0) {
		log_error("re-resolving the upstreams: %s", plans ? a->err : "out of memory");
		free(plans);
		return;
	}
	for (uint32_t i = 0; i < cfg->npools; i++)
		if (!same_pool(nr.specs[i], nr.nspecs[i], a->run.specs[i], a->run.nspecs[i])) {
			changed = true;
			log_info("pool %s: upstream pool changed: %d address(es) now",
				 cfg->pools[i].name, nr.nspecs[i]);
			log_pool(cfg->pools[i].name, nr.specs[i], nr.nspecs[i]);
		}
	for (uint32_t i = 0; i < a->nworkers; i++) {
		if (changed)
			worker_post_plan(worker_nth(a->workers, i), plans[i]);
		else
			worker_plan_free(plans[i]); /* nothing moved: the workers keep theirs */
	}
	free(plans);
	for (int i = 0; i < CONFIG_MAX_POOLS; i++) {
		if (changed) {
			free(a->run.specs[i]);
			a->run.specs[i] = nr.specs[i];
			a->run.nspecs[i] = nr.nspecs[i];
		} else {
			free(nr.specs[i]);
		}
	}
}

/* The control thread's loop: until every worker has exited, wait for SIGHUP (re-read the
 * config) or for the resolve interval (re-resolve), and hand the workers their new plans. */
static void control_loop(struct app *a, int argc, char **argv)
{
	uint64_t since_status_ms = 0, since_resolve_ms = 0;
	struct timespec tick = { .tv_sec = 0, .tv_nsec = CONTROL_POLL_MS * 1000000L };
	sigset_t hup;

	sigemptyset(&hup);
	sigaddset(&hup, SIGHUP);
	while (atomic_load(&running_workers) > 0) {
		bool reread = sigtimedwait(&hup, NULL, &tick) == SIGHUP;

		since_resolve_ms += CONTROL_POLL_MS;
		since_status_ms += CONTROL_POLL_MS;
		if (a->sn.fd >= 0 && since_status_ms >= 1000) {
			unsigned int active = 0;

			since_status_ms = 0;
			for (uint32_t i = 0; i < a->nworkers; i++)
				active += worker_active(worker_nth(a->workers, i));
			sdnotify_status_sessions(&a->sn, active);
		}
		if (reread) {
			since_resolve_ms = 0;
			reload(a, argc, argv);
			continue;
		}
		if (a->cfg->resolve_interval_s == 0 ||
		    since_resolve_ms < (uint64_t)a->cfg->resolve_interval_s * 1000)
			continue;
		since_resolve_ms = 0;
		reresolve(a);
	}
}

/* How many workers, and how many sessions each may hold (from the open-file limit). */
static void app_size(struct app *a)
{
	const struct config *cfg = a->cfg;
	uint32_t total;

	a->nworkers = cfg->workers != 0 ? cfg->workers : cpu_count();
	if (a->nworkers > CONFIG_MAX_WORKERS)
		a->nworkers = CONFIG_MAX_WORKERS;
	a->nofile = raise_nofile();
	if (cfg->max_conns != 0) {
		total = cfg->max_conns;
	} else {
		rlim_t reserve = FD_RESERVE + 8 * ((rlim_t)a->nworkers - 1);

		total = a->nofile > 2 * reserve ? (uint32_t)((a->nofile - reserve) / 2) : 16;
	}
	/* The session limit follows the open-file limit only: the completion queue is sized for
	 * it where it can be, and an overflow beyond that is reaped, not avoided (worker.h). */
	a->per_worker = (total + a->nworkers - 1) / a->nworkers;
}

/* Every listener's sockets for every worker (bound here, or adopted from systemd) and every
 * pool resolved, before any thread starts, so that a port in use, a bad address or a name
 * that does not resolve is reported once, synchronously, with exit 1; and the metrics
 * listener with the workers' snapshots. */
static int app_bind(struct app *a)
{
	struct worker_plan **plans;

	a->workers = workers_new(a->nworkers);
	a->args = calloc(a->nworkers, sizeof(*a->args));
	a->threads = calloc(a->nworkers, sizeof(*a->threads));
	plans = calloc(a->nworkers, sizeof(*plans));
	if (a->workers == NULL || a->args == NULL || a->threads == NULL || plans == NULL) {
		free(plans);
		return fail("out of memory");
	}
	a->nact = sdnotify_listen_fds(a->act, WORKER_MAX_LISTENERS, a->err, sizeof(a->err));
	if (a->nact < 0) {
		char msg[sizeof(a->err) + 64];

		free(plans);
		snprintf(msg, sizeof(msg), "socket activation: %s", a->err);
		return fail(msg);
	}
	if (a->nact > 0) {
		/* Kept so that a SIGHUP re-parse still accepts a config without --listen. */
		setenv("UPROXY_SOCKET_ACTIVATED", "1", 1);
		log_info("socket-activated: listener %s serves the %d sockets systemd passed%s",
			 a->cfg->listeners[0].name, a->nact,
			 a->cfg->listeners[0].listen.port != 0 ? "; its listen address is not bound"
							       : "");
	}
	/* Before --user drops the rights that may be needed to reach systemd's socket. */
	if (sdnotify_open(&a->sn) < 0)
		log_warn("NOTIFY_SOCKET is set but unusable; not notifying systemd");
	if (build_plans(a, a->cfg, NULL, plans, &a->run) < 0) {
		free(plans);
		return fail(a->err);
	}
	a->run.cfg = a->cfg;
	for (uint32_t i = 0; i < a->nworkers; i++)
		worker_set_plan(worker_nth(a->workers, i), plans[i]);
	free(plans);
	if (a->cfg->stats.port == 0)
		return 0;
	for (uint32_t i = 0; i < a->nworkers; i++) {
		if (worker_enable_stats(worker_nth(a->workers, i)) < 0)
			return fail("out of memory");
	}
	{
		struct listener sl[WORKER_MAX_LISTENERS];
		int n = listener_open(&a->cfg->stats, sl, WORKER_MAX_LISTENERS, a->err,
				      sizeof(a->err));
		int fds[WORKER_MAX_LISTENERS];

		if (n < 0) {
			char msg[sizeof(a->err) + 64];

			snprintf(msg, sizeof(msg), "--stats: %s", a->err);
			return fail(msg);
		}
		for (int i = 0; i < n; i++)
			fds[i] = sl[i].fd;
		worker_serve_stats(worker_nth(a->workers, 0), fds, n);
	}
	return 0;
}

/* --user, once everything privileged is done; then SIGINT/SIGTERM go to worker 0's loop. */
static int app_drop_and_signals(struct app *a)
{
	int sigfd;

	if (a->cfg->user[0] != '\0' && drop_privileges(a->cfg->user, a->err, sizeof(a->err)) < 0)
		return fail(a->err);
	sigfd = open_signalfd();
	if (sigfd < 0) {
		snprintf(a->err, sizeof(a->err), "cannot set up signal handling: %s",
			 strerror(errno));
		return fail(a->err);
	}
	worker_set_signals(worker_nth(a->workers, 0), sigfd, &a->sn);
	return 0;
}

/* Picks the event backend once for the process (--backend; auto: io_uring where it can be set
 * up, else epoll, saying why once); every worker then runs on it. */
static void app_choose_backend(struct app *a)
{
	char why[1024];

	a->backend_asked = a->cfg->backend;
	a->cfg->backend = loop_choose_backend(a->cfg->backend, why, sizeof(why));
	if (why[0] != '\0')
		log_warn("%s", why);
	log_info("event backend: %s", loop_backend_str(a->cfg->backend));
}

/* Starts every worker thread and waits until each has reported its set-up; they run only if
 * all came up (st.go). */
static void app_start_workers(struct app *a)
{
	struct startup *st = &a->st;

	for (uint32_t i = 0; i < a->nworkers; i++) {
		a->args[i] = (struct thread_arg){ .w = worker_nth(a->workers, i),
						  .st = st,
						  .cfg = a->cfg,
						  .max_sessions = a->per_worker };
		if (pthread_create(&a->threads[i], NULL, worker_thread, &a->args[i]) != 0) {
			snprintf(st->why, sizeof(st->why), "cannot start worker thread %u: %s", i,
				 strerror(errno));
			pthread_mutex_lock(&st->mu);
			st->failed++;
			pthread_mutex_unlock(&st->mu);
			break;
		}
		a->started++;
		atomic_fetch_add(&running_workers, 1);
	}
	pthread_mutex_lock(&st->mu);
	while (st->reported < a->started)
		pthread_cond_wait(&st->cv, &st->mu);
	st->go = st->failed == 0;
	st->decided = true;
	pthread_cond_broadcast(&st->cv);
	pthread_mutex_unlock(&st->mu);
}

/* The start-up lines, and READY=1 to systemd. */
static void app_announce(struct app *a)
{
	const struct config *cfg = a->cfg;

	for (uint32_t i = 0; i < cfg->nlisteners; i++) {
		const struct config_listener *l = &cfg->listeners[i];
		char hp[ADDR_HOST_MAX + 16];

		if (i == 0 && a->nact > 0)
			log_info("listener %s: %d socket-activated socket(s)", l->name, a->nact);
		else
			log_info("listening on %s (listener %s)",
				 addr_format_hostport(&l->listen, hp, sizeof(hp)), l->name);
	}
	if (cfg->stats.port) {
		char hp[ADDR_STRLEN + ADDR_HOST_MAX];

		log_info("metrics at http://%s/metrics",
			 addr_format_hostport(&cfg->stats, hp, sizeof(hp)));
	}
	for (uint32_t i = 0; i < cfg->npools; i++)
		log_pool(cfg->pools[i].name, a->run.specs[i], a->run.nspecs[i]);
	log_info("%u worker(s), max %u connections each, %u buffers of %u bytes each, "
		 "%u listener(s), %u pool(s), open-file limit %llu",
		 a->nworkers, a->per_worker, cfg->buffers, cfg->buffer_size, cfg->nlisteners,
		 cfg->npools, (unsigned long long)a->nofile);
	sdnotify_ready(&a->sn);
	sdnotify_status_sessions(&a->sn, 0);
}

/* Waits for every worker; the exit status is the first non-zero one. */
static int app_join(struct app *a)
{
	int status = 0;

	for (int i = 0; i < a->started; i++) {
		pthread_join(a->threads[i], NULL);
		if (a->args[i].status != 0)
			status = a->args[i].status;
	}
	if (!a->st.go)
		return fail(a->st.why);
	if (a->started < (int)a->nworkers)
		return 1;
	return status;
}

/* Closes what the workers did not (plans of workers that never ran, metrics sockets when
 * nothing ran), removes the unix sockets' files, and frees the rest. */
static void app_cleanup(struct app *a)
{
	workers_free(a->workers, a->nworkers);
	if (a->run.cfg != NULL)
		for (uint32_t i = 0; i < a->run.cfg->nlisteners; i++)
			unlink_unix(&a->run, i);
	for (int i = 0; i < a->nlogs; i++)
		close(a->logs[i].fd);
	sdnotify_close(&a->sn);
	free(a->threads);
	free(a->args);
	running_free(&a->run, a->cfg);
	free(a->cfg);
}

/* --check: everything but binding: the names resolve, the user exists. One line per problem
 * on stderr; "configuration OK" on stdout. Returns the exit status, 0 or 2. */
static int check_config(const struct config *cfg)
{
	struct addr addrs[ADDR_MAX_RESOLVED];
	int problems = 0;
	char why[512];

	for (uint32_t i = 0; i < cfg->npools; i++) {
		const struct config_pool *cp = &cfg->pools[i];

		for (uint32_t u = 0; u < cp->nupstreams; u++) {
			if (addr_resolve(&cp->upstreams[u].hp, addrs, ADDR_MAX_RESOLVED, why,
					 sizeof(why)) < 0) {
				fprintf(stderr, "uproxy: %s: pool '%s': %s\n", cp->where, cp->name,
					why);
				problems++;
			}
		}
	}
	for (uint32_t i = 0; i < cfg->nlisteners; i++) {
		const struct config_listener *l = &cfg->listeners[i];

		if (l->listen.any || l->listen.unix_sock || l->listen.port == 0)
			continue;
		if (addr_resolve(&l->listen, addrs, ADDR_MAX_RESOLVED, why, sizeof(why)) < 0) {
			fprintf(stderr, "uproxy: %s: listener '%s': %s\n", l->where, l->name, why);
			problems++;
		}
	}
	if (problems == 0 && listeners_overlap(cfg, why, sizeof(why)) < 0) {
		fprintf(stderr, "uproxy: %s\n", why);
		problems++;
	}
	if (cfg->stats.port != 0 && !cfg->stats.any) {
		if (addr_resolve(&cfg->stats, addrs, ADDR_MAX_RESOLVED, why, sizeof(why)) < 0) {
			fprintf(stderr, "uproxy: --stats: %s\n", why);
			problems++;
		}
	}
	if (cfg->user[0] != '\0' && getpwnam(cfg->user) == NULL) {
		fprintf(stderr, "uproxy: --user %s: no such user\n", cfg->user);
		problems++;
	}
	if (problems > 0)
		return 2;
	printf("configuration OK\n");
	return 0;
}

int main(int argc, char **argv)
{
	static struct app app = {
		.sn = { .fd = -1 },
		.st = { .mu = PTHREAD_MUTEX_INITIALIZER, .cv = PTHREAD_COND_INITIALIZER },
	};
	struct app *a = &app;
	int status;

	a->cfg = calloc(1, sizeof(*a->cfg));
	if (a->cfg == NULL)
		return fail("out of memory");
	switch (config_parse(a->cfg, argc, argv, stdout, a->err, sizeof(a->err))) {
	case CONFIG_OK:
		break;
	case CONFIG_EXIT:
		free(a->cfg);
		return 0;
	case CONFIG_USAGE:
		/* One line per problem (--check gathers every bad line of the file). */
		for (char *line = strtok(a->err, "\n"); line != NULL; line = strtok(NULL, "\n"))
			fprintf(stderr, "uproxy: %s\n", line);
		free(a->cfg);
		return 2;
	}
	if (a->cfg->check) {
		status = check_config(a->cfg);
		free(a->cfg);
		return status;
	}
	if (listeners_overlap(a->cfg, a->err, sizeof(a->err)) < 0) {
		fprintf(stderr, "uproxy: %s\n", a->err);
		free(a->cfg);
		return 2;
	}
	log_set_level(a->cfg->log_level);
	signal(SIGPIPE, SIG_IGN);
	app_size(a);
	status = app_bind(a);
	if (status == 0)
		status = app_drop_and_signals(a);
	if (status == 0) {
		app_choose_backend(a);
		app_start_workers(a);
		if (a->st.go) {
			app_announce(a);
			control_loop(a, argc, argv);
		}
		status = app_join(a);
	}
	app_cleanup(a);
	return status;
}
