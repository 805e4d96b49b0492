/* config: parses the command line and the config file once into struct config. Every rejected
 * input produces one sentence naming the option (and the file and line) and the problem.
 * Opens no socket, resolves no name; the only I/O is reading the config file.
 *
 * The file is "key value" lines. Keys before the first section are global, or, for listener
 * and pool keys, the top-level ("default") listener's and the defaults of every section.
 * `[listener NAME]` and `[pool NAME]` open sections. The command line applies on top of the
 * file's top level. */
#include "uproxy/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "uproxy/acl.h"
#include "uproxy/sni.h"

enum opt_id {
	OPT_CONFIG,
	OPT_CHECK,
	OPT_LISTEN,
	OPT_UPSTREAM,
	OPT_POOL,
	OPT_BALANCE,
	OPT_LOG_LEVEL,
	OPT_BUFFER_SIZE,
	OPT_BUFFERS,
	OPT_MAX_CONNS,
	OPT_WORKERS,
	OPT_CONNECT_TIMEOUT,
	OPT_RETRIES,
	OPT_FAIL_THRESHOLD,
	OPT_FAIL_TIMEOUT,
	OPT_HEALTH_INTERVAL,
	OPT_RESOLVE_INTERVAL,
	OPT_IDLE_TIMEOUT,
	OPT_FIN_TIMEOUT,
	OPT_DRAIN_TIMEOUT,
	OPT_STATS,
	OPT_ACCESS_LOG,
	OPT_LOG_FORMAT,
	OPT_SEND_PROXY,
	OPT_ACCEPT_PROXY,
	OPT_ALLOW,
	OPT_DENY,
	OPT_MAX_CONNS_PER_CLIENT,
	OPT_RATE_PER_CLIENT,
	OPT_RATE_BURST,
	OPT_CLIENT_TABLE_SIZE,
	OPT_CLIENT_TABLE_FULL,
	OPT_SNI_ROUTE,
	OPT_SNI_MISSING,
	OPT_SNI_TIMEOUT,
	OPT_KEEPALIVE_CLIENT,
	OPT_KEEPALIVE_UPSTREAM,
	OPT_UNIX_MODE,
	OPT_USER,
	OPT_BACKEND,
	OPT_HELP,
	OPT_VERSION,
	OPT__COUNT
};

/* Where an option belongs: the process (global), a pool, a listener, or the command line only.
 */
enum scope { SC_GLOBAL, SC_POOL, SC_LISTENER, SC_CMDLINE };

/* A plain number option stores into its scope's struct at field, within [min, max]. Listener
 * and pool options name the bytes [field, field + len) that a section inherits from the top
 * level when it does not set the option itself (len 0: not inherited). */
struct opt_def {
	enum opt_id id;
	const char *name; /* long name without "--" */
	char short_name;  /* 0 if none */
	const char *arg;  /* value placeholder in --help; NULL: no value */
	enum scope scope;
	bool number; /* a plain number at field */
	size_t field, len;
	uint32_t min, max;
	const char *help; /* --help text; may contain \n for continuation lines */
};

#define G(f) offsetof(struct config, f), 0
#define P(f) offsetof(struct config_pool, f), sizeof(((struct config_pool *)0)->f)
#define L(f) offsetof(struct config_listener, f), sizeof(((struct config_listener *)0)->f)
/* Two adjacent fields, an array and its count, inherited together. */
#define L2(f, n)                                                                                   \
	offsetof(struct config_listener, f), offsetof(struct config_listener, n) +                 \
						     sizeof(uint32_t) -                            \
						     offsetof(struct config_listener, f)
#define NONE 0, 0

/* A session keeps the ids it tried in a small array (session.h: SESSION_MAX_TRIES = 17). */
#define SESSION_MAX_RETRIES 16

/* One entry per option, laid out for reading. */
/* clang-format off */
static const struct opt_def opts[] = {
	{ OPT_CONFIG, "config", 'c', "FILE", SC_CMDLINE, false, NONE, 0, 0,
	  "read options from FILE: 'key value' lines (the long options without\n"
	  "'--'), '#' starts a comment, [listener NAME] and [pool NAME] open\n"
	  "sections (see uproxy(1)); the command line overrides the file's top\n"
	  "level. SIGHUP re-reads it." },
	{ OPT_CHECK, "check", 0, NULL, SC_CMDLINE, false, NONE, 0, 0,
	  "check the configuration: parse it, validate it and resolve the names,\n"
	  "bind nothing; print 'configuration OK' (exit 0) or one line per\n"
	  "problem (exit 2)." },
	{ OPT_LISTEN, "listen", 'l', "ADDR", SC_LISTENER, false, NONE, 0, 0,
	  "[HOST]:PORT or unix:/PATH to accept clients on (required). ':PORT' =\n"
	  "every IPv4 and IPv6 address; IPv6 in brackets, e.g. [::1]:8080." },
	{ OPT_UPSTREAM, "upstream", 'u', "ADDR[,weight=N][,backup]", SC_POOL, false, NONE, 0, 0,
	  "an upstream to forward to: HOST:PORT or unix:/PATH (required; repeat\n"
	  "for a pool). A host name stands for every address it resolves to;\n"
	  "weight 1-256 (default 1); a backup is used only while every other\n"
	  "upstream is down." },
	{ OPT_POOL, "pool", 0, "NAME", SC_LISTENER, false, NONE, 0, 0,
	  "(config file) forward to the [pool NAME] section's upstreams instead\n"
	  "of the listener's own upstream lines." },
	{ OPT_BALANCE, "balance", 0, "POLICY", SC_POOL, false, P(balance), 0, 0,
	  "roundrobin, leastconn, random2 (power of two choices) or hash\n"
	  "(consistent hash of the client address) (default: roundrobin)." },
	{ OPT_CONNECT_TIMEOUT, "connect-timeout", 0, "MS", SC_POOL, true, P(connect_timeout_ms), 1, CONFIG_MAX_MS,
	  "upstream connect timeout in milliseconds (default: 5000)." },
	{ OPT_RETRIES, "retries", 0, "N", SC_POOL, true, P(retries), 0, SESSION_MAX_RETRIES,
	  "after a failed or timed-out connect, try up to N more upstreams\n"
	  "before closing the client, 0-16 (default: 2)." },
	{ OPT_FAIL_THRESHOLD, "fail-threshold", 0, "N", SC_POOL, true, P(fail_threshold), 1, 1000,
	  "consecutive connect failures that mark an upstream down (default: 3)." },
	{ OPT_FAIL_TIMEOUT, "fail-timeout", 0, "SEC", SC_POOL, true, P(fail_timeout_s), 1, 86400,
	  "seconds an upstream stays down before it is tried again (default: 10)." },
	{ OPT_HEALTH_INTERVAL, "health-interval", 0, "MS", SC_POOL, true, P(health_interval_ms), 0, CONFIG_MAX_MS,
	  "active health check: a TCP connect to each upstream every MS\n"
	  "milliseconds; 0 = off (default: 0)." },
	{ OPT_RESOLVE_INTERVAL, "resolve-interval", 0, "SEC", SC_GLOBAL, true, G(resolve_interval_s), 0, 86400,
	  "re-resolve upstream host names every SEC seconds; 0 = only at start\n"
	  "and on SIGHUP (default: 30)." },
	{ OPT_IDLE_TIMEOUT, "idle-timeout", 0, "MS", SC_LISTENER, true, L(idle_timeout_ms), 1, CONFIG_MAX_MS,
	  "close a session after MS milliseconds of inactivity: no byte received\n"
	  "from, and no send completed to, either peer (default: 600000)." },
	{ OPT_FIN_TIMEOUT, "fin-timeout", 0, "MS", SC_LISTENER, true, L(fin_timeout_ms), 1, CONFIG_MAX_MS,
	  "once one direction has finished, the inactivity allowed before the\n"
	  "session is closed (default: 30000)." },
	{ OPT_MAX_CONNS, "max-conns", 0, "N", SC_GLOBAL, true, G(max_conns), 1, CONFIG_MAX_CONNS_LIMIT,
	  "most client connections open at once; above it new clients wait in\n"
	  "the kernel backlog (default: derived from the open-file limit,\n"
	  "(limit - 32 - 8 x (workers - 1)) / 2)." },
	{ OPT_DRAIN_TIMEOUT, "drain-timeout", 0, "MS", SC_LISTENER, true, L(drain_timeout_ms), 0, CONFIG_MAX_MS,
	  "on SIGTERM/SIGINT (or when SIGHUP removes the listener), stop\n"
	  "accepting and let open sessions finish for up to MS milliseconds, then\n"
	  "close the rest (default: 10000)." },
	{ OPT_WORKERS, "workers", 'w', "N|auto", SC_GLOBAL, false, NONE, 0, 0,
	  "worker threads, each with its own ring, buffers and SO_REUSEPORT\n"
	  "listeners, sharing nothing; auto = one per CPU (default: 1, at most\n"
	  "64). --buffers is per worker, --max-conns is split between workers." },
	{ OPT_BUFFER_SIZE, "buffer-size", 0, "BYTES", SC_GLOBAL, true, G(buffer_size), CONFIG_MIN_BUFFER_SIZE,
	  CONFIG_MAX_BUFFER_SIZE, "size of each receive buffer, 1024-1048576 (default: 16384)." },
	{ OPT_BUFFERS, "buffers", 0, "N", SC_GLOBAL, true, G(buffers), CONFIG_MIN_BUFFERS, CONFIG_MAX_BUFFERS,
	  "receive buffers per worker in the shared pool, a power of two,\n"
	  "64-32768 (default: 2048); pool memory = N x buffer size. When it runs\n"
	  "low, sessions receive into 4 KiB buffers of their own." },
	{ OPT_STATS, "stats", 0, "[HOST]:PORT", SC_GLOBAL, false, NONE, 0, 0,
	  "serve Prometheus metrics at GET /metrics on this address, from\n"
	  "worker 0's ring (default: off)." },
	{ OPT_ACCESS_LOG, "access-log", 0, "PATH|-", SC_LISTENER, false, L(access_log), 0, 0,
	  "append one line per finished session (time, listener, client,\n"
	  "upstream, bytes each way, duration, close reason) to PATH, or stdout\n"
	  "for '-'; written through the ring, never blocking (default: off)." },
	{ OPT_LOG_FORMAT, "log-format", 0, "text|json", SC_LISTENER, false, L(log_json), 0, 0,
	  "format of the access-log lines (default: text)." },
	{ OPT_SEND_PROXY, "send-proxy", 0, "v1|v2", SC_LISTENER, false, L(send_proxy), 0, 0,
	  "send a PROXY protocol header with the client's addresses to the\n"
	  "upstream before any client byte (default: off)." },
	{ OPT_ACCEPT_PROXY, "accept-proxy", 0, NULL, SC_LISTENER, false, L(accept_proxy), 0, 0,
	  "require a PROXY protocol v1 or v2 header from every client (3 s to\n"
	  "arrive; a missing or malformed one closes the connection); its\n"
	  "addresses are what logs, hashing, access lists and --send-proxy use\n"
	  "(default: off)." },
	{ OPT_ALLOW, "allow", 0, "CIDR|all", SC_LISTENER, false, L2(acl, nacl), 0, 0,
	  "access list entry: clients in CIDR (an address, a.b.c.d/N, v6/N or\n"
	  "all) are served. allow and deny lines are checked in order, the first\n"
	  "match wins, no match = allowed; a refused client is closed at once." },
	{ OPT_DENY, "deny", 0, "CIDR|all", SC_LISTENER, false, L2(acl, nacl), 0, 0,
	  "access list entry: clients in CIDR are refused (see --allow)." },
	{ OPT_MAX_CONNS_PER_CLIENT, "max-conns-per-client", 0, "N", SC_LISTENER, true, L(max_conns_per_client), 0, CONFIG_MAX_CONNS_LIMIT,
	  "most connections open at once from one client address; more are\n"
	  "closed at once; 0 = no limit (default: 0)." },
	{ OPT_RATE_PER_CLIENT, "rate-per-client", 0, "R", SC_LISTENER, true, L(rate_per_client), 0, 1000000,
	  "new connections per second one client address may open (a token\n"
	  "bucket of --rate-burst); more are closed at once; 0 = no limit\n"
	  "(default: 0)." },
	{ OPT_RATE_BURST, "rate-burst", 0, "N", SC_LISTENER, true, L(rate_burst), 1, 1000000,
	  "the token bucket's size: connections a client may open at once\n"
	  "before --rate-per-client applies (default: = --rate-per-client)." },
	{ OPT_CLIENT_TABLE_SIZE, "client-table-size", 0, "N", SC_LISTENER, true, L(client_table_size), 64, CONFIG_MAX_CLIENT_TABLE,
	  "client addresses tracked for the per-client limits, per worker,\n"
	  "64-4194304; 32 bytes each, allocated only when a limit is set\n"
	  "(default: 16384 = 512 KiB)." },
	{ OPT_CLIENT_TABLE_FULL, "client-table-full", 0, "open|closed", SC_LISTENER, false, L(client_table_fail_open), 0, 0,
	  "a new client address when the table is full: open = served without\n"
	  "limits, closed = refused (default: open)." },
	{ OPT_SNI_ROUTE, "sni-route", 0, "NAME=POOL", SC_LISTENER, false, NONE, 0, 0,
	  "TLS passthrough: a client whose ClientHello names NAME (exact, or\n"
	  "*.example.com) goes to the [pool POOL]; names matching no route go\n"
	  "to the listener's own pool (or are closed if it has none)." },
	{ OPT_SNI_MISSING, "sni-missing", 0, "default|close", SC_LISTENER, false, L(sni_missing_close), 0, 0,
	  "with sni-route: a client that sends no TLS ClientHello or one\n"
	  "without a server name goes to the listener's own pool (default) or is\n"
	  "closed (default: default)." },
	{ OPT_SNI_TIMEOUT, "sni-timeout", 0, "MS", SC_LISTENER, true, L(sni_timeout_ms), 1, CONFIG_MAX_MS,
	  "with sni-route: how long the whole ClientHello may take to arrive\n"
	  "(at most 16 KiB) before the client is closed (default: 5000)." },
	{ OPT_KEEPALIVE_CLIENT, "keepalive-client", 0, "IDLE:INTVL:COUNT|off", SC_LISTENER, false, L(keepalive[0]), 0, 0,
	  "TCP keepalive on client sockets, in seconds: a client gone without\n"
	  "a FIN or RST is closed after IDLE + INTVL x COUNT (default: off)." },
	{ OPT_KEEPALIVE_UPSTREAM, "keepalive-upstream", 0, "IDLE:INTVL:COUNT|off", SC_LISTENER, false, L(keepalive[1]), 0, 0,
	  "the same on upstream sockets (default: off)." },
	{ OPT_UNIX_MODE, "unix-mode", 0, "OCTAL", SC_LISTENER, false, L(unix_mode), 0, 0,
	  "permissions of a unix:/PATH listener's socket file (default: 0666)." },
	{ OPT_USER, "user", 0, "NAME", SC_GLOBAL, false, NONE, 0, 0,
	  "after binding the listeners (so ports below 1024 work), switch to\n"
	  "this user and its groups; exits if that fails (default: stay)." },
	{ OPT_BACKEND, "backend", 0, "io_uring|epoll|auto", SC_GLOBAL, false, NONE, 0, 0,
	  "the event backend: auto uses io_uring where it can be set up and falls\n"
	  "back to epoll where it cannot (a container's seccomp profile, the\n"
	  "sysctl kernel.io_uring_disabled), saying why at start; io_uring fails\n"
	  "if it is unavailable; epoll never uses it (default: auto)." },
	{ OPT_LOG_LEVEL, "log-level", 0, "LEVEL", SC_GLOBAL, false, NONE, 0, 0,
	  "error, warn, info or debug (default: info). Logs go to stderr." },
	{ OPT_HELP, "help", 'h', NULL, SC_CMDLINE, false, NONE, 0, 0, "print this help and exit." },
	{ OPT_VERSION, "version", 'V', NULL, SC_CMDLINE, false, NONE, 0, 0, "print the version and exit." },
};
/* clang-format on */

#define NOPTS (sizeof(opts) / sizeof(opts[0]))

static void listener_defaults(struct config_listener *l)
{
	memset(l, 0, sizeof(*l));
	l->unix_mode = CONFIG_DEFAULT_UNIX_MODE;
	l->pool = CONFIG_NO_POOL;
	l->idle_timeout_ms = CONFIG_DEFAULT_IDLE_TIMEOUT_MS;
	l->fin_timeout_ms = CONFIG_DEFAULT_FIN_TIMEOUT_MS;
	l->drain_timeout_ms = CONFIG_DEFAULT_DRAIN_TIMEOUT_MS;
	l->client_table_size = CONFIG_DEFAULT_CLIENT_TABLE;
	l->client_table_fail_open = true;
	l->sni_timeout_ms = CONFIG_DEFAULT_SNI_TIMEOUT_MS;
}

static void pool_defaults(struct config_pool *p)
{
	memset(p, 0, sizeof(*p));
	p->balance = BALANCE_ROUNDROBIN;
	p->connect_timeout_ms = CONFIG_DEFAULT_CONNECT_TIMEOUT_MS;
	p->retries = CONFIG_DEFAULT_RETRIES;
	p->fail_threshold = BACKEND_FAIL_THRESHOLD_DEFAULT;
	p->fail_timeout_s = BACKEND_FAIL_TIMEOUT_MS_DEFAULT / 1000;
}

void config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->log_level = LOG_INFO;
	cfg->buffer_size = CONFIG_DEFAULT_BUFFER_SIZE;
	cfg->buffers = CONFIG_DEFAULT_BUFFERS;
	cfg->workers = 1;
	cfg->resolve_interval_s = CONFIG_DEFAULT_RESOLVE_INTERVAL_S;
}

void config_usage(FILE *out)
{
	fputs("Usage: uproxy --listen ADDR --upstream ADDR [options]\n"
	      "       uproxy --config FILE [options]\n"
	      "       uproxy --check [--config FILE] [options]\n"
	      "\n"
	      "A TCP (layer 4) proxy on io_uring (or epoll): accepts clients on each listener\n"
	      "and forwards each connection, both ways, to one of its upstream servers. The\n"
	      "command line describes one listener; a config file can describe several.\n"
	      "\n"
	      "Options:\n",
	      out);
	for (size_t i = 0; i < NOPTS; i++) {
		const struct opt_def *o = &opts[i];
		char head[64];
		const char *h = o->help;

		if (o->id == OPT_POOL)
			continue; /* config file only */
		snprintf(head, sizeof(head), "%c%c%s--%s%s%s", o->short_name ? '-' : ' ',
			 o->short_name ? o->short_name : ' ', o->short_name ? ", " : "  ", o->name,
			 o->arg ? " " : "", o->arg ? o->arg : "");
		fprintf(out, "  %-30s", head);
		if (strlen(head) > 30)
			fprintf(out, "\n  %-30s", "");
		for (;;) {
			const char *nl = strchr(h, '\n');

			fprintf(out, " %.*s\n", (int)(nl ? nl - h : (long)strlen(h)), h);
			if (nl == NULL)
				break;
			h = nl + 1;
			fprintf(out, "  %-30s", "");
		}
	}
	fputs("\nSignals: SIGTERM/SIGINT drain and exit 0; SIGHUP re-reads --config: listeners\n"
	      "are added, removed (drained) or changed, pools re-resolved; a bad file keeps\n"
	      "the running configuration (workers and buffers need a restart).\n"
	      "Exit status: 0 after SIGINT/SIGTERM or --help/--version, 2 for a usage or\n"
	      "configuration error, 1 for a run-time failure (unresolvable host, address in\n"
	      "use, --backend io_uring unavailable).\n",
	      out);
}

/* Parses a decimal unsigned number within [min, max]; no sign, no suffix, no blanks. */
static int parse_u32(const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
	unsigned long long v = 0;

	if (*s == '\0')
		return -EINVAL;
	for (const char *c = s; *c; c++) {
		if (!isdigit((unsigned char)*c))
			return -EINVAL;
		v = v * 10 + (unsigned long long)(*c - '0');
		if (v > max)
			return -ERANGE;
	}
	if (v < min)
		return -ERANGE;
	*out = (uint32_t)v;
	return 0;
}

int config_parse_upstream(const char *s, struct config_upstream *out, const char **why)
{
	char buf[ADDR_HOST_MAX + 64];
	const char *comma = strchr(s, ',');
	size_t len = comma ? (size_t)(comma - s) : strlen(s);

	out->weight = BACKEND_WEIGHT_DEFAULT;
	out->backup = false;
	if (len >= sizeof(buf)) {
		*why = "address too long";
		return -EINVAL;
	}
	memcpy(buf, s, len);
	buf[len] = '\0';
	if (addr_parse(buf, &out->hp, why) < 0)
		return -EINVAL;
	if (out->hp.any) {
		*why = "a host is required (HOST:PORT)";
		return -EINVAL;
	}
	while (comma != NULL) {
		const char *item = comma + 1;
		const char *next = strchr(item, ',');
		size_t n = next ? (size_t)(next - item) : strlen(item);
		char num[16];

		if (n == 6 && strncmp(item, "backup", 6) == 0) {
			out->backup = true;
		} else if (n > 7 && strncmp(item, "weight=", 7) == 0 && n - 7 < sizeof(num)) {
			memcpy(num, item + 7, n - 7);
			num[n - 7] = '\0';
			if (parse_u32(num, 1, BACKEND_WEIGHT_MAX, &out->weight) < 0) {
				*why = "weight must be a whole number from 1 to 256";
				return -EINVAL;
			}
		} else {
			*why = "expected ',weight=N' or ',backup' after the address";
			return -EINVAL;
		}
		comma = next;
	}
	return 0;
}

/* "IDLE:INTVL:COUNT" seconds, or "off". */
static int parse_keepalive(const char *s, struct config_keepalive *ka)
{
	char buf[64], *a, *b;

	if (strcmp(s, "off") == 0) {
		memset(ka, 0, sizeof(*ka));
		return 0;
	}
	if (strlen(s) >= sizeof(buf))
		return -EINVAL;
	strcpy(buf, s);
	a = strchr(buf, ':');
	b = a ? strchr(a + 1, ':') : NULL;
	if (a == NULL || b == NULL)
		return -EINVAL;
	*a++ = '\0';
	*b++ = '\0';
	if (parse_u32(buf, 1, 32767, &ka->idle_s) < 0 ||
	    parse_u32(a, 1, 32767, &ka->interval_s) < 0 || parse_u32(b, 1, 127, &ka->count) < 0)
		return -EINVAL;
	ka->on = true;
	return 0;
}

/* A listener or pool name: [A-Za-z0-9_.-]{1,32}. */
static bool name_ok(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n >= CONFIG_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (!isalnum((unsigned char)s[i]) && s[i] != '_' && s[i] != '.' && s[i] != '-')
			return false;
	}
	return true;
}

static const struct opt_def *find_long(const char *name, size_t len)
{
	for (size_t i = 0; i < NOPTS; i++) {
		if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
			return &opts[i];
	}
	return NULL;
}

static const struct opt_def *find_short(char c)
{
	for (size_t i = 0; i < NOPTS; i++) {
		if (opts[i].short_name == c)
			return &opts[i];
	}
	return NULL;
}

static const struct opt_def *find_id(enum opt_id id)
{
	for (size_t i = 0; i < NOPTS; i++) {
		if (opts[i].id == id)
			return &opts[i];
	}
	return NULL;
}

/* What a section (or the top level) set itself, and where. */
struct marks {
	bool set[OPT__COUNT];
	unsigned int line[OPT__COUNT]; /* 0: the command line */
};

enum sect_kind { SECT_TOP, SECT_LISTENER, SECT_POOL };

/* A [pool] or [listener] section's own pool: what `pool NAME` and sni-route name, by name. */
struct pool_ref {
	char name[CONFIG_NAME_MAX];
	unsigned int line;
};

/* The whole parse: the top level and the sections, resolved into struct config at the end. */
struct pstate {
	struct config *cfg;
	const char *file; /* NULL: command line */
	char where[CONFIG_WHERE_MAX + 8];
	unsigned int lineno;
	enum sect_kind kind;
	int cur; /* index of the current section in cfg->listeners or cfg->pools */
	/* The top level: the "default" listener and its pool, and the defaults of every section.
	 */
	struct config_listener top;
	struct config_pool top_pool;
	struct marks top_marks, cmd_marks;
	struct marks lmarks[CONFIG_MAX_LISTENERS], pmarks[CONFIG_MAX_POOLS];
	struct pool_ref lpool[CONFIG_MAX_LISTENERS]; /* `pool NAME` per listener */
	struct pool_ref sni_pool[CONFIG_MAX_LISTENERS][CONFIG_MAX_SNI_ROUTES]; /* route -> name */
	struct pool_ref top_lpool;
	struct pool_ref top_sni_pool[CONFIG_MAX_SNI_ROUTES];
	bool upstreams_reset; /* the command line's first --upstream replaces the file's */
	bool acl_reset, sni_reset;
	bool has_sections;
	bool all_errors; /* --check: report every bad line, not only the first */
	unsigned int top_upstream_line;
};

static struct marks *cur_marks(struct pstate *ps)
{
	if (ps->file == NULL)
		return &ps->cmd_marks;
	if (ps->kind == SECT_LISTENER)
		return &ps->lmarks[ps->cur];
	if (ps->kind == SECT_POOL)
		return &ps->pmarks[ps->cur];
	return &ps->top_marks;
}

/* The listener being written (top level or a section). */
static struct config_listener *cur_listener(struct pstate *ps)
{
	return ps->kind == SECT_LISTENER ? &ps->cfg->listeners[ps->cur] : &ps->top;
}

/* A listener section's own pool lives at the same index in a parallel array while parsing. */
static struct config_pool lsect_pool[CONFIG_MAX_LISTENERS];

static struct config_pool *cur_pool(struct pstate *ps)
{
	if (ps->kind == SECT_POOL)
		return &ps->cfg->pools[ps->cur];
	if (ps->kind == SECT_LISTENER)
		return &lsect_pool[ps->cur];
	return &ps->top_pool;
}

#define ERR(...)                                                                                   \
	do {                                                                                       \
		snprintf(err, errlen, __VA_ARGS__);                                                \
		return CONFIG_USAGE;                                                               \
	} while (0)

/* Applies one option with its value to the current scope. */
static enum config_result apply(struct pstate *ps, const struct opt_def *o, const char *val,
				FILE *out, char *err, size_t errlen)
{
	struct config *cfg = ps->cfg;
	struct marks *mk = cur_marks(ps);
	const char *why = NULL;
	const char *w = ps->where;
	bool repeatable = o->id == OPT_UPSTREAM || o->id == OPT_ALLOW || o->id == OPT_DENY ||
			  o->id == OPT_SNI_ROUTE;
	int rc;

	if (ps->file != NULL && ps->kind != SECT_TOP && o->scope == SC_GLOBAL)
		ERR("%s'%s' is a global option: put it before the first section", w, o->name);
	if (ps->kind == SECT_POOL && o->scope == SC_LISTENER)
		ERR("%s'%s' belongs in a [listener] section, not in [pool %s]", w, o->name,
		    cfg->pools[ps->cur].name);
	if (mk->set[o->id] && !repeatable)
		ERR("%s--%s given more than once", w, o->name);
	/* allow and deny are one list: count either as "the list was given here". */
	mk->set[o->id] = true;
	mk->line[o->id] = ps->lineno;
	if (o->id == OPT_ALLOW || o->id == OPT_DENY) {
		mk->set[OPT_ALLOW] = mk->set[OPT_DENY] = true;
		mk->line[OPT_ALLOW] = mk->line[OPT_DENY] = ps->lineno;
	}
	if (o->number) {
		void *base = o->scope == SC_GLOBAL ? (void *)cfg
			     : o->scope == SC_POOL ? (void *)cur_pool(ps)
						   : (void *)cur_listener(ps);
		uint32_t *dst = (uint32_t *)((char *)base + o->field);

		rc = parse_u32(val, o->min, o->max, dst);
		if (rc == -ERANGE)
			ERR("%s--%s: %s is out of range (%u-%u)", w, o->name, val, o->min, o->max);
		if (rc < 0)
			ERR("%s--%s: '%s' is not a whole number", w, o->name, val);
		if (o->id == OPT_BUFFERS && (cfg->buffers & (cfg->buffers - 1)))
			ERR("%s--buffers %s: must be a power of two", w, val);
		return CONFIG_OK;
	}
	struct config_listener *l = cur_listener(ps);
	struct config_pool *p = cur_pool(ps);

	switch (o->id) {
	case OPT_CONFIG:
		if (ps->file != NULL)
			ERR("%sa config file cannot name another (config %s)", w, val);
		break; /* read by config_parse before anything else */
	case OPT_CHECK:
		if (ps->file != NULL)
			ERR("%s'check' belongs on the command line", w);
		cfg->check = true;
		break;
	case OPT_LISTEN:
		if (addr_parse(val, &l->listen, &why) < 0)
			ERR("%s--listen '%s': %s", w, val, why);
		break;
	case OPT_POOL:
		if (ps->file == NULL)
			ERR("--pool belongs in a config file's [listener] section");
		if (!name_ok(val))
			ERR("%spool '%s': expected a name of 1-32 letters, digits, '_', '.', '-'",
			    w, val);
		if (ps->kind == SECT_LISTENER) {
			snprintf(ps->lpool[ps->cur].name, CONFIG_NAME_MAX, "%s", val);
			ps->lpool[ps->cur].line = ps->lineno;
		} else {
			snprintf(ps->top_lpool.name, CONFIG_NAME_MAX, "%s", val);
			ps->top_lpool.line = ps->lineno;
		}
		break;
	case OPT_ACCESS_LOG:
		if (*val == '\0' || strlen(val) >= sizeof(l->access_log))
			ERR("%s--access-log: bad path '%s'", w, val);
		strcpy(l->access_log, val);
		break;
	case OPT_LOG_FORMAT:
		if (strcmp(val, "text") != 0 && strcmp(val, "json") != 0)
			ERR("%s--log-format '%s': expected text or json", w, val);
		l->log_json = strcmp(val, "json") == 0;
		break;
	case OPT_SEND_PROXY:
		if (strcmp(val, "v1") != 0 && strcmp(val, "v2") != 0)
			ERR("%s--send-proxy '%s': expected v1 or v2", w, val);
		l->send_proxy = val[1] == '1' ? 1 : 2;
		break;
	case OPT_ACCEPT_PROXY:
		l->accept_proxy = true;
		break;
	case OPT_ALLOW:
	case OPT_DENY:
		if (ps->file == NULL && !ps->acl_reset) {
			ps->top.nacl = 0; /* the command line's list replaces the file's */
			ps->acl_reset = true;
		}
		if (l->nacl >= CONFIG_MAX_ACL)
			ERR("%smore than %u allow/deny lines", w, CONFIG_MAX_ACL);
		if (acl_parse(val, o->id == OPT_ALLOW, &l->acl[l->nacl], &why) < 0)
			ERR("%s--%s '%s': %s", w, o->name, val, why);
		l->nacl++;
		break;
	case OPT_CLIENT_TABLE_FULL:
		if (strcmp(val, "open") != 0 && strcmp(val, "closed") != 0)
			ERR("%s--client-table-full '%s': expected open or closed", w, val);
		l->client_table_fail_open = strcmp(val, "open") == 0;
		break;
	case OPT_SNI_ROUTE: {
		char pat[CONFIG_SNI_PATTERN_MAX], *pool;
		size_t n = strcspn(val, " \t=");
		struct pool_ref *ref;

		if (ps->file == NULL && !ps->sni_reset) {
			ps->top.nsni_routes = 0;
			ps->sni_reset = true;
		}
		if (l->nsni_routes >= CONFIG_MAX_SNI_ROUTES)
			ERR("%smore than %u sni-route lines", w, CONFIG_MAX_SNI_ROUTES);
		if (n == 0 || n >= sizeof(pat))
			ERR("%s--sni-route '%s': expected NAME POOL (or NAME=POOL)", w, val);
		memcpy(pat, val, n);
		pat[n] = '\0';
		pool = (char *)val + n;
		while (*pool == ' ' || *pool == '\t' || *pool == '=')
			pool++;
		if (*pool == '\0' || !name_ok(pool))
			ERR("%s--sni-route '%s': expected NAME POOL (or NAME=POOL), POOL a [pool] "
			    "section's name",
			    w, val);
		for (char *c = pat; *c; c++)
			*c = (char)tolower((unsigned char)*c);
		if (sni_pattern_check(pat, &why) < 0)
			ERR("%s--sni-route '%s': %s", w, pat, why);
		ref = ps->kind == SECT_LISTENER ? &ps->sni_pool[ps->cur][l->nsni_routes]
						: &ps->top_sni_pool[l->nsni_routes];
		snprintf(ref->name, sizeof(ref->name), "%s", pool);
		ref->line = ps->lineno;
		snprintf(l->sni_routes[l->nsni_routes].pattern, CONFIG_SNI_PATTERN_MAX, "%s", pat);
		l->nsni_routes++;
		break;
	}
	case OPT_SNI_MISSING:
		if (strcmp(val, "default") != 0 && strcmp(val, "close") != 0)
			ERR("%s--sni-missing '%s': expected default or close", w, val);
		l->sni_missing_close = strcmp(val, "close") == 0;
		break;
	case OPT_KEEPALIVE_CLIENT:
	case OPT_KEEPALIVE_UPSTREAM:
		if (parse_keepalive(val, &l->keepalive[o->id == OPT_KEEPALIVE_UPSTREAM]) < 0)
			ERR("%s--%s '%s': expected IDLE:INTERVAL:COUNT in seconds (each >= 1, "
			    "count <= 127) or off",
			    w, o->name, val);
		break;
	case OPT_UNIX_MODE: {
		char *end;
		unsigned long m = strtoul(val, &end, 8);

		if (*val == '\0' || *end != '\0' || m > 0777 || m == 0 || val[0] == '-' ||
		    val[0] == '+')
			ERR("%s--unix-mode '%s': expected octal permissions from 0001 to 0777, "
			    "such "
			    "as 0660",
			    w, val);
		l->unix_mode = (uint32_t)m;
		break;
	}
	case OPT_USER:
		if (*val == '\0' || strlen(val) >= sizeof(cfg->user))
			ERR("%s--user: bad name '%s'", w, val);
		strcpy(cfg->user, val);
		break;
	case OPT_STATS:
		if (addr_parse(val, &cfg->stats, &why) < 0)
			ERR("%s--stats '%s': %s", w, val, why);
		if (cfg->stats.unix_sock)
			ERR("%s--stats '%s': a TCP address is required", w, val);
		break;
	case OPT_UPSTREAM:
		if (ps->file == NULL && !ps->upstreams_reset) {
			p->nupstreams = 0;
			ps->upstreams_reset = true;
		}
		if (ps->kind == SECT_TOP && ps->top_upstream_line == 0)
			ps->top_upstream_line = ps->lineno;
		if (p->nupstreams >= CONFIG_MAX_UPSTREAMS)
			ERR("%smore than %u --upstream entries", w, CONFIG_MAX_UPSTREAMS);
		if (config_parse_upstream(val, &p->upstreams[p->nupstreams], &why) < 0)
			ERR("%s--upstream '%s': %s", w, val, why);
		p->nupstreams++;
		break;
	case OPT_BALANCE:
		if (backend_balance_parse(val, &p->balance) < 0)
			ERR("%s--balance '%s': expected roundrobin, leastconn, random2 or hash", w,
			    val);
		break;
	case OPT_LOG_LEVEL:
		if (log_level_parse(val, &cfg->log_level) < 0)
			ERR("%s--log-level '%s': expected error, warn, info or debug", w, val);
		break;
	case OPT_BACKEND:
		if (strcmp(val, "auto") == 0)
			cfg->backend = LOOP_BACKEND_AUTO;
		else if (strcmp(val, "io_uring") == 0)
			cfg->backend = LOOP_BACKEND_IO_URING;
		else if (strcmp(val, "epoll") == 0)
			cfg->backend = LOOP_BACKEND_EPOLL;
		else
			ERR("%s--backend '%s': expected io_uring, epoll or auto", w, val);
		break;
	case OPT_WORKERS:
		if (strcmp(val, "auto") == 0) {
			cfg->workers = 0;
			break;
		}
		if (parse_u32(val, 1, CONFIG_MAX_WORKERS, &cfg->workers) < 0)
			ERR("%s--workers '%s': expected auto or a number from 1 to %u", w, val,
			    CONFIG_MAX_WORKERS);
		break;
	case OPT_HELP:
	case OPT_VERSION:
		if (ps->file != NULL)
			ERR("%s'%s' belongs on the command line", w, o->name);
		if (o->id == OPT_HELP)
			config_usage(out);
		else
			fprintf(out, "uproxy %s\nbackends: %s\n", UPROXY_VERSION,
				LOOP_BACKENDS_BUILT);
		return CONFIG_EXIT;
	default:
		ERR("%s--%s: not handled", w, o->name);
	}
	return CONFIG_OK;
}

/* A section header "[listener NAME]" or "[pool NAME]" (the brackets already checked). */
static enum config_result open_section(struct pstate *ps, char *line, char *err, size_t errlen)
{
	struct config *cfg = ps->cfg;
	char *in = line + 1, *close = strchr(in, ']'), *name;
	const char *w = ps->where;

	if (close == NULL || close[1] != '\0')
		ERR("%sexpected [listener NAME] or [pool NAME]", w);
	*close = '\0';
	while (isspace((unsigned char)*in))
		in++;
	name = in;
	while (*name && !isspace((unsigned char)*name))
		name++;
	if (*name != '\0')
		*name++ = '\0';
	while (isspace((unsigned char)*name))
		name++;
	for (char *t = name + strlen(name); t > name && isspace((unsigned char)t[-1]);)
		*--t = '\0';
	if (strcmp(in, "listener") != 0 && strcmp(in, "pool") != 0)
		ERR("%sunknown section '[%s]': expected [listener NAME] or [pool NAME]", w, in);
	if (!name_ok(name))
		ERR("%s[%s %s]: expected a name of 1-32 letters, digits, '_', '.', '-'", w, in,
		    name);
	ps->has_sections = true;
	if (strcmp(in, "listener") == 0) {
		for (uint32_t i = 0; i < cfg->nlisteners; i++)
			if (strcmp(cfg->listeners[i].name, name) == 0)
				ERR("%slistener '%s' is defined twice (first at %s)", w, name,
				    cfg->listeners[i].where);
		if (cfg->nlisteners >= CONFIG_MAX_LISTENERS)
			ERR("%smore than %u listeners", w, CONFIG_MAX_LISTENERS);
		ps->kind = SECT_LISTENER;
		ps->cur = (int)cfg->nlisteners++;
		listener_defaults(&cfg->listeners[ps->cur]);
		pool_defaults(&lsect_pool[ps->cur]);
		memset(&ps->lmarks[ps->cur], 0, sizeof(ps->lmarks[ps->cur]));
		memset(&ps->lpool[ps->cur], 0, sizeof(ps->lpool[ps->cur]));
		snprintf(cfg->listeners[ps->cur].name, CONFIG_NAME_MAX, "%s", name);
		snprintf(cfg->listeners[ps->cur].where, CONFIG_WHERE_MAX, "%s:%u", ps->file,
			 ps->lineno);
	} else {
		for (uint32_t i = 0; i < cfg->npools; i++)
			if (strcmp(cfg->pools[i].name, name) == 0)
				ERR("%spool '%s' is defined twice (first at %s)", w, name,
				    cfg->pools[i].where);
		if (cfg->npools >= CONFIG_MAX_POOLS)
			ERR("%smore than %u pools", w, CONFIG_MAX_POOLS);
		ps->kind = SECT_POOL;
		ps->cur = (int)cfg->npools++;
		pool_defaults(&cfg->pools[ps->cur]);
		memset(&ps->pmarks[ps->cur], 0, sizeof(ps->pmarks[ps->cur]));
		snprintf(cfg->pools[ps->cur].name, CONFIG_NAME_MAX, "%s", name);
		snprintf(cfg->pools[ps->cur].where, CONFIG_WHERE_MAX, "%s:%u", ps->file,
			 ps->lineno);
	}
	return CONFIG_OK;
}

/* Applies one line of the file (n bytes at p) to ps. */
static enum config_result parse_line(struct pstate *ps, const char *p, size_t n, char *err,
				     size_t errlen)
{
	char line[1024], *k, *v, *hash;
	const struct opt_def *o;

	snprintf(ps->where, sizeof(ps->where), "%s:%u: ", ps->file, ps->lineno);
	if (n >= sizeof(line))
		ERR("%sline longer than %zu characters", ps->where, sizeof(line) - 1);
	memcpy(line, p, n);
	line[n] = '\0';
	if (memchr(line, '\0', n) != NULL)
		ERR("%sNUL byte in the file", ps->where);
	hash = strchr(line, '#');
	if (hash != NULL)
		*hash = '\0';
	k = line;
	while (isspace((unsigned char)*k))
		k++;
	for (char *t = k + strlen(k); t > k && isspace((unsigned char)t[-1]);)
		*--t = '\0';
	if (*k == '\0')
		return CONFIG_OK;
	if (*k == '[')
		return open_section(ps, k, err, errlen);
	v = k;
	while (*v && !isspace((unsigned char)*v) && *v != '=')
		v++;
	if (*v != '\0') {
		*v++ = '\0';
		while (isspace((unsigned char)*v) || *v == '=')
			v++;
	}
	if (k[0] == '-')
		ERR("%swrite '%s' without the leading dashes", ps->where, k);
	o = find_long(k, strlen(k));
	if (o == NULL)
		ERR("%sunknown option '%s'", ps->where, k);
	if (o->arg != NULL && *v == '\0')
		ERR("%s'%s' needs a value", ps->where, k);
	if (o->arg == NULL && *v != '\0')
		ERR("%s'%s' takes no value", ps->where, k);
	return apply(ps, o, v, NULL, err, errlen);
}

/* Reads the file's lines into ps. Stops at the first bad line, or with ps->all_errors (for
 * --check) goes on and gathers one line per bad line in err, '\n'-separated. */
static enum config_result parse_lines(struct pstate *ps, const char *text, size_t len, char *err,
				      size_t errlen)
{
	const char *p = text, *end = text + len;
	size_t used = 0;
	char one[1024];

	for (ps->lineno = 1; p < end; ps->lineno++) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		size_t n = (size_t)((eol ? eol : end) - p);
		enum config_result r;

		r = parse_line(ps, p, n, ps->all_errors ? one : err,
			       ps->all_errors ? sizeof(one) : errlen);
		p = eol ? eol + 1 : end;
		if (r == CONFIG_OK)
			continue;
		if (!ps->all_errors)
			return r;
		if (used < errlen)
			used += (size_t)snprintf(err + used, errlen - used, "%s%s",
						 used ? "\n" : "", one);
	}
	return used > 0 ? CONFIG_USAGE : CONFIG_OK;
}

/* Copies into dst every inheritable option of scope sc that marks did not set, from src. */
static void inherit(void *dst, const void *src, const struct marks *mk, enum scope sc)
{
	for (size_t i = 0; i < NOPTS; i++) {
		const struct opt_def *o = &opts[i];

		if (o->scope != sc || o->len == 0 || mk->set[o->id])
			continue;
		memcpy((char *)dst + o->field, (const char *)src + o->field, o->len);
	}
}

/* Merges the command line's marks into the top level's (the command line wins). */
static void merge_marks(struct marks *top, const struct marks *cmd)
{
	for (int i = 0; i < OPT__COUNT; i++) {
		if (cmd->set[i]) {
			top->set[i] = true;
			top->line[i] = 0;
		}
	}
}

static int pool_index(const struct config *cfg, const char *name)
{
	for (uint32_t i = 0; i < cfg->npools; i++)
		if (strcmp(cfg->pools[i].name, name) == 0)
			return (int)i;
	return -1;
}

/* "FILE:LINE: " for a line of the file, "" for the command line (line 0). */
static const char *at(const struct pstate *ps, unsigned int line, char *buf, size_t len)
{
	if (line == 0 || ps->file == NULL)
		snprintf(buf, len, "%s", "");
	else
		snprintf(buf, len, "%s:%u: ", ps->file, line);
	return buf;
}

/* Two listeners must never share an address: with SO_REUSEPORT both binds would succeed and
 * the kernel would split one port's clients between them. ":PORT" overlaps every host on it. */
static bool same_listen(const struct hostport *a, const struct hostport *b)
{
	if (a->unix_sock || b->unix_sock)
		return a->unix_sock && b->unix_sock && strcmp(a->host, b->host) == 0;
	if (a->port != b->port)
		return false;
	return a->any || b->any || strcasecmp(a->host, b->host) == 0;
}

/* An option set on listener l (marks m) that it cannot use would be parsed and ignored: an
 * error. Returns true with err filled. */
static bool unusable(const struct pstate *ps, const struct config_listener *l,
		     const struct marks *m, char *err, size_t errlen)
{
	char w[CONFIG_WHERE_MAX + 8];

	if (l->nsni_routes == 0 && (m->set[OPT_SNI_MISSING] || m->set[OPT_SNI_TIMEOUT])) {
		enum opt_id id = m->set[OPT_SNI_MISSING] ? OPT_SNI_MISSING : OPT_SNI_TIMEOUT;

		snprintf(err, errlen, "%s%s needs sni-route lines in listener '%s'",
			 at(ps, m->line[id], w, sizeof(w)), find_id(id)->name, l->name);
		return true;
	}
	if (m->set[OPT_RATE_BURST] && l->rate_per_client == 0) {
		snprintf(err, errlen, "%srate-burst needs rate-per-client in listener '%s'",
			 at(ps, m->line[OPT_RATE_BURST], w, sizeof(w)), l->name);
		return true;
	}
	if (!l->listen.unix_sock && m->set[OPT_UNIX_MODE]) {
		snprintf(err, errlen,
			 "%sunix-mode applies to a unix:/PATH listener only ('%s' is not "
			 "one)",
			 at(ps, m->line[OPT_UNIX_MODE], w, sizeof(w)), l->name);
		return true;
	}
	return false;
}

/* Resolves the parse into cfg's final listeners and pools: the top-level listener, the
 * inheritance of top-level values, pool references, and every cross-line rule. */
static enum config_result finish(struct pstate *ps, bool need_listener, char *err, size_t errlen)
{
	struct config *cfg = ps->cfg;
	struct marks *tm = &ps->top_marks;
	uint32_t nnamed = cfg->npools;
	char w[CONFIG_WHERE_MAX + 8];
	bool activated = getenv("LISTEN_FDS") != NULL || getenv("UPROXY_SOCKET_ACTIVATED") != NULL;
	bool has_top = ps->top.listen.port != 0 || ps->top.listen.unix_sock ||
		       (activated && !ps->has_sections && ps->top_pool.nupstreams > 0);

	merge_marks(tm, &ps->cmd_marks);
	/* Every [listener] gets an implicit pool (its own upstream lines) after the named ones. */
	for (uint32_t i = 0; i < cfg->nlisteners; i++) {
		struct config_listener *l = &cfg->listeners[i];
		/* Its marks hold its pool keys too: inherit() and the checks below pick them
		 * by scope. */
		struct marks *lm = &ps->lmarks[i];

		inherit(l, &ps->top, lm, SC_LISTENER);
		if (lsect_pool[i].nupstreams > 0) {
			if (ps->lpool[i].name[0] != '\0')
				ERR("%slistener '%s' has both upstream lines and "
				    "'pool %s': use one",
				    at(ps, ps->lpool[i].line, w, sizeof(w)), l->name,
				    ps->lpool[i].name);
			if (cfg->npools >= CONFIG_MAX_POOLS)
				ERR("%s: more than %u pools (each listener with upstream lines has "
				    "its own)",
				    l->where, CONFIG_MAX_POOLS);
			if (pool_index(cfg, l->name) >= 0)
				ERR("%s: listener '%s' has upstream lines, so it has a pool "
				    "of that name; [pool %s] (%s) clashes with it",
				    l->where, l->name, l->name,
				    cfg->pools[pool_index(cfg, l->name)].where);
			inherit(&lsect_pool[i], &ps->top_pool, lm, SC_POOL);
			cfg->pools[cfg->npools] = lsect_pool[i];
			memcpy(cfg->pools[cfg->npools].name, l->name, CONFIG_NAME_MAX);
			memcpy(cfg->pools[cfg->npools].where, l->where, CONFIG_WHERE_MAX);
			l->pool = (uint16_t)cfg->npools++;
		} else {
			for (size_t k = 0; k < NOPTS; k++)
				if (opts[k].scope == SC_POOL && lm->set[opts[k].id])
					ERR("%s'%s' in listener '%s' without upstream lines: "
					    "put it in the pool's section",
					    at(ps, lm->line[opts[k].id], w, sizeof(w)),
					    opts[k].name, l->name);
			if (ps->lpool[i].name[0] != '\0') {
				int pi = pool_index(cfg, ps->lpool[i].name);

				if (pi < 0 || (uint32_t)pi >= nnamed)
					ERR("%slistener '%s': no [pool %s] section",
					    at(ps, ps->lpool[i].line, w, sizeof(w)), l->name,
					    ps->lpool[i].name);
				l->pool = (uint16_t)pi;
			}
		}
		for (uint32_t r = 0; r < l->nsni_routes; r++) {
			const struct pool_ref *ref = &ps->sni_pool[i][r];
			int pi = pool_index(cfg, ref->name);

			if (pi < 0 || (uint32_t)pi >= nnamed)
				ERR("%slistener '%s': sni-route to '%s': no [pool %s] section",
				    at(ps, ref->line, w, sizeof(w)), l->name, ref->name, ref->name);
			l->sni_routes[r].pool = (uint16_t)pi;
		}
		if (l->listen.port == 0 && !l->listen.unix_sock)
			ERR("%s: listener '%s' has no 'listen' address", l->where, l->name);
		if (l->pool == CONFIG_NO_POOL && l->nsni_routes == 0)
			ERR("%s: listener '%s' has no upstream: add 'upstream ADDR' lines or "
			    "'pool NAME'",
			    l->where, l->name);
		if (unusable(ps, l, lm, err, errlen))
			return CONFIG_USAGE;
	}
	for (uint32_t i = 0; i < nnamed; i++) {
		inherit(&cfg->pools[i], &ps->top_pool, &ps->pmarks[i], SC_POOL);
		if (cfg->pools[i].nupstreams == 0)
			ERR("%s: pool '%s' has no upstream lines", cfg->pools[i].where,
			    cfg->pools[i].name);
	}
	if (has_top) {
		struct config_listener *l;

		if (cfg->nlisteners >= CONFIG_MAX_LISTENERS)
			ERR("%smore than %u listeners (the top-level one and %u sections)",
			    at(ps, tm->line[OPT_LISTEN], w, sizeof(w)), CONFIG_MAX_LISTENERS,
			    cfg->nlisteners);
		for (uint32_t i = 0; i < cfg->nlisteners; i++)
			if (strcmp(cfg->listeners[i].name, "default") == 0)
				ERR("%s: the name 'default' is taken by the top-level listener "
				    "(--listen); choose another",
				    cfg->listeners[i].where);
		/* The top-level listener goes first: it is the command line's. */
		memmove(&cfg->listeners[1], &cfg->listeners[0],
			cfg->nlisteners * sizeof(cfg->listeners[0]));
		cfg->nlisteners++;
		l = &cfg->listeners[0];
		*l = ps->top;
		snprintf(l->name, CONFIG_NAME_MAX, "default");
		if (tm->line[OPT_LISTEN] != 0)
			snprintf(l->where, CONFIG_WHERE_MAX, "%s:%u", ps->file,
				 tm->line[OPT_LISTEN]);
		else
			snprintf(l->where, CONFIG_WHERE_MAX, "command line");
		if (ps->top_pool.nupstreams > 0) {
			if (ps->top_lpool.name[0] != '\0')
				ERR("%sthe top-level listener has both upstream lines and 'pool "
				    "%s': use one",
				    at(ps, ps->top_lpool.line, w, sizeof(w)), ps->top_lpool.name);
			if (cfg->npools >= CONFIG_MAX_POOLS)
				ERR("%smore than %u pools (the top-level one and %u others)",
				    at(ps, ps->top_upstream_line, w, sizeof(w)), CONFIG_MAX_POOLS,
				    cfg->npools);
			if (pool_index(cfg, "default") >= 0)
				ERR("%s: the pool name 'default' is taken by the top-level "
				    "upstreams",
				    cfg->pools[pool_index(cfg, "default")].where);
			cfg->pools[cfg->npools] = ps->top_pool;
			snprintf(cfg->pools[cfg->npools].name, CONFIG_NAME_MAX, "default");
			snprintf(cfg->pools[cfg->npools].where, CONFIG_WHERE_MAX, "%s", l->where);
			l->pool = (uint16_t)cfg->npools++;
		} else if (ps->top_lpool.name[0] != '\0') {
			int pi = pool_index(cfg, ps->top_lpool.name);

			if (pi < 0 || (uint32_t)pi >= nnamed)
				ERR("%sno [pool %s] section",
				    at(ps, ps->top_lpool.line, w, sizeof(w)), ps->top_lpool.name);
			l->pool = (uint16_t)pi;
		}
		for (uint32_t r = 0; r < l->nsni_routes; r++) {
			int pi = pool_index(cfg, ps->top_sni_pool[r].name);

			if (pi < 0 || (uint32_t)pi >= nnamed)
				ERR("%ssni-route to '%s': no [pool %s] section",
				    at(ps, ps->top_sni_pool[r].line, w, sizeof(w)),
				    ps->top_sni_pool[r].name, ps->top_sni_pool[r].name);
			l->sni_routes[r].pool = (uint16_t)pi;
		}
		if (l->pool == CONFIG_NO_POOL && l->nsni_routes == 0)
			ERR("%s%s", at(ps, tm->line[OPT_LISTEN], w, sizeof(w)),
			    tm->line[OPT_LISTEN] != 0
				    ? "the top-level listener ('listen') has no 'upstream' or "
				      "'pool'"
				    : "missing --upstream HOST:PORT (see --help)");
		/* With sections, the top level's values are their defaults too: only a file
		 * without sections says they are meant for the top-level listener alone. */
		if (!ps->has_sections && unusable(ps, l, tm, err, errlen))
			return CONFIG_USAGE;
	} else if (ps->top_pool.nupstreams > 0 && ps->has_sections) {
		ERR("%s'upstream' at the top level belongs to the top-level listener, which has no "
		    "'listen'",
		    at(ps, ps->top_upstream_line, w, sizeof(w)));
	} else if (ps->top_lpool.name[0] != '\0' || ps->top.nsni_routes > 0) {
		/* Only the top-level listener can use them: without it they would be ignored. */
		bool pool = ps->top_lpool.name[0] != '\0';

		ERR("%s'%s' at the top level belongs to the top-level listener, which has no "
		    "'listen'",
		    at(ps, pool ? ps->top_lpool.line : ps->top_sni_pool[0].line, w, sizeof(w)),
		    pool ? "pool" : "sni-route");
	}
	if (need_listener && cfg->nlisteners == 0)
		ERR("missing --listen [HOST]:PORT (see --help)");
	/* Cross-listener rules. */
	for (uint32_t i = 0; i < cfg->nlisteners; i++) {
		struct config_listener *l = &cfg->listeners[i];

		for (uint32_t j = 0; j < i; j++) {
			char a[ADDR_HOST_MAX + 16];

			if ((l->listen.port != 0 || l->listen.unix_sock) &&
			    same_listen(&l->listen, &cfg->listeners[j].listen))
				ERR("%s: listener '%s' listens on %s, as does listener '%s' (%s)",
				    l->where, l->name,
				    addr_format_hostport(&l->listen, a, sizeof(a)),
				    cfg->listeners[j].name, cfg->listeners[j].where);
		}
	}
	return CONFIG_OK;
}

/* Starts a parse of cfg (already defaulted). */
static void pstate_init(struct pstate *ps, struct config *cfg)
{
	memset(ps, 0, sizeof(*ps));
	ps->cfg = cfg;
	ps->kind = SECT_TOP;
	listener_defaults(&ps->top);
	pool_defaults(&ps->top_pool);
}

enum config_result config_parse_text(struct config *cfg, const char *text, size_t len,
				     const char *name, char *err, size_t errlen)
{
	static struct pstate ps; /* ~70 KiB: off the stack; the parse is single-threaded */
	enum config_result r;

	pstate_init(&ps, cfg);
	ps.file = name;
	r = parse_lines(&ps, text, len, err, errlen);
	if (r != CONFIG_OK)
		return r;
	ps.file = name;
	return finish(&ps, false, err, errlen);
}

static enum config_result read_file(struct pstate *ps, const char *path, char *err, size_t errlen)
{
	/* A config file is a few hundred lines; 1 MiB is a generous bound against mistakes. */
	enum { MAX_FILE = 1 << 20 };
	FILE *f = fopen(path, "r");
	char *buf;
	size_t n;
	enum config_result r;

	if (f == NULL)
		ERR("cannot read config file '%s': %s", path, strerror(errno));
	buf = malloc(MAX_FILE + 1);
	if (buf == NULL) {
		fclose(f);
		ERR("out of memory reading '%s'", path);
	}
	n = fread(buf, 1, MAX_FILE + 1, f);
	if (ferror(f) || n > MAX_FILE) {
		snprintf(err, errlen, "cannot read config file '%s': %s", path,
			 n > MAX_FILE ? "larger than 1 MiB" : strerror(errno));
		r = CONFIG_USAGE;
	} else {
		ps->file = path;
		r = parse_lines(ps, buf, n, err, errlen);
	}
	free(buf);
	fclose(f);
	return r;
}

/* Splits argv[i] into an option and its value; advances *i past a separate value. */
static enum config_result next_arg(int argc, char **argv, int *i, const struct opt_def **po,
				   const char **pval, char *err, size_t errlen)
{
	const char *arg = argv[*i], *val = NULL;
	const struct opt_def *o;

	if (arg[0] == '-' && arg[1] == '-' && arg[2] != '\0') {
		const char *eq = strchr(arg + 2, '=');
		size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);

		o = find_long(arg + 2, len);
		if (o == NULL)
			ERR("unknown option '%.*s' (see --help)", (int)(len + 2), arg);
		if (eq != NULL) {
			if (o->arg == NULL)
				ERR("option --%s takes no value", o->name);
			val = eq + 1;
		}
	} else if (arg[0] == '-' && arg[1] != '\0' && arg[1] != '-' && arg[2] == '\0') {
		o = find_short(arg[1]);
		if (o == NULL)
			ERR("unknown option '%s' (see --help)", arg);
	} else {
		ERR("unexpected argument '%s' (see --help)", arg);
	}
	if (o->arg != NULL && val == NULL) {
		if (*i + 1 >= argc)
			ERR("option --%s needs a value", o->name);
		val = argv[++*i];
	}
	*po = o;
	*pval = val;
	return CONFIG_OK;
}

enum config_result config_parse(struct config *cfg, int argc, char **argv, FILE *out, char *err,
				size_t errlen)
{
	static struct pstate ps;
	const struct opt_def *o;
	const char *val;
	enum config_result r;

	config_defaults(cfg);
	pstate_init(&ps, cfg);
	err[0] = '\0';
	/* First pass: syntax, --help/--version, and where the config file is. */
	for (int i = 1; i < argc; i++) {
		r = next_arg(argc, argv, &i, &o, &val, err, errlen);
		if (r != CONFIG_OK)
			return r;
		if (o->id == OPT_HELP || o->id == OPT_VERSION)
			return apply(&ps, o, val, out, err, errlen);
		if (o->id == OPT_CHECK)
			ps.all_errors = true;
		if (o->id == OPT_CONFIG) {
			if (cfg->config_path[0] != '\0')
				ERR("--config given more than once");
			if (strlen(val) >= sizeof(cfg->config_path) || *val == '\0')
				ERR("--config: bad path '%s'", val);
			strcpy(cfg->config_path, val);
		}
	}
	if (cfg->config_path[0] != '\0') {
		r = read_file(&ps, cfg->config_path, err, errlen);
		if (r != CONFIG_OK)
			return r;
	}
	/* Second pass: the command line on top of the file's top level. */
	ps.file = NULL;
	ps.kind = SECT_TOP;
	ps.where[0] = '\0';
	ps.lineno = 0;
	for (int i = 1; i < argc; i++) {
		next_arg(argc, argv, &i, &o, &val, err, errlen);
		r = apply(&ps, o, val, out, err, errlen);
		if (r != CONFIG_OK)
			return r;
	}
	ps.file = cfg->config_path[0] != '\0' ? cfg->config_path : NULL;
	return finish(&ps, true, err, errlen);
}

const struct config_pool *config_listener_pool(const struct config *cfg,
					       const struct config_listener *l)
{
	return l->pool == CONFIG_NO_POOL ? NULL : &cfg->pools[l->pool];
}

int config_find_listener(const struct config *cfg, const char *name)
{
	for (uint32_t i = 0; i < cfg->nlisteners; i++)
		if (strcmp(cfg->listeners[i].name, name) == 0)
			return (int)i;
	return -1;
}

int config_find_pool(const struct config *cfg, const char *name)
{
	return pool_index(cfg, name);
}

bool config_listener_equal(const struct config_listener *a, const struct config_listener *b)
{
	/* Where it is written does not change what it does (a comment line added above). */
	return memcmp(a, b, offsetof(struct config_listener, where)) == 0 &&
	       memcmp(&a->listen, &b->listen,
		      sizeof(*a) - offsetof(struct config_listener, listen)) == 0;
}

bool config_pool_equal(const struct config_pool *a, const struct config_pool *b)
{
	return memcmp(a, b, sizeof(*a)) == 0;
}
