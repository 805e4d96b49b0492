/* config: parses the command line and the config file once into struct config. Every rejected
 * input produces one sentence naming the option (and the file and line) and the problem.
 * Opens no socket, resolves no name; the only I/O is reading the config file. */
#include "uproxy/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

enum opt_id {
	OPT_CONFIG,
	OPT_LISTEN,
	OPT_UPSTREAM,
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
	OPT_USER,
	OPT_BACKEND,
	OPT_HELP,
	OPT_VERSION,
	OPT__COUNT
};

/* A plain number option stores into the config at field, within [min, max]. */
struct opt_def {
	enum opt_id id;
	const char *name; /* long name without "--" */
	char short_name;  /* 0 if none */
	const char *arg;  /* value placeholder in --help; NULL: no value */
	size_t field;	  /* offsetof(struct config, x) for number options, else 0 */
	uint32_t min, max;
	const char *help; /* --help text; may contain \n for continuation lines */
};

#define NUM(f) offsetof(struct config, f)

/* A session keeps the ids it tried in a small array (session.h: SESSION_MAX_TRIES = 17). */
#define SESSION_MAX_RETRIES 16

/* One entry per option, laid out for reading. */
/* clang-format off */
static const struct opt_def opts[] = {
	{ OPT_CONFIG, "config", 'c', "FILE", 0, 0, 0,
	  "read options from FILE: the long options without '--', one per line\n"
	  "('name value' or 'name=value'), '#' starts a comment; options on the\n"
	  "command line override the file's. SIGHUP re-reads it." },
	{ OPT_LISTEN, "listen", 'l', "[HOST]:PORT", 0, 0, 0,
	  "address to accept clients on (required). ':PORT' = every IPv4 and\n"
	  "IPv6 address; IPv6 in brackets, e.g. [::1]:8080." },
	{ OPT_UPSTREAM, "upstream", 'u', "HOST:PORT[,weight=N]", 0, 0, 0,
	  "an upstream to forward to (required; repeat for a pool). A host name\n"
	  "stands for every address it resolves to; weight 1-256 (default 1)." },
	{ OPT_BALANCE, "balance", 0, "POLICY", 0, 0, 0,
	  "roundrobin, leastconn, random2 (power of two choices) or hash\n"
	  "(consistent hash of the client address) (default: roundrobin)." },
	{ OPT_CONNECT_TIMEOUT, "connect-timeout", 0, "MS", NUM(connect_timeout_ms), 1, CONFIG_MAX_MS,
	  "upstream connect timeout in milliseconds (default: 5000)." },
	{ OPT_RETRIES, "retries", 0, "N", NUM(retries), 0, SESSION_MAX_RETRIES,
	  "after a failed or timed-out connect, try up to N more upstreams\n"
	  "before closing the client, 0-16 (default: 2)." },
	{ OPT_FAIL_THRESHOLD, "fail-threshold", 0, "N", NUM(fail_threshold), 1, 1000,
	  "consecutive connect failures that mark an upstream down (default: 3)." },
	{ OPT_FAIL_TIMEOUT, "fail-timeout", 0, "SEC", NUM(fail_timeout_s), 1, 86400,
	  "seconds an upstream stays down before it is tried again (default: 10)." },
	{ OPT_HEALTH_INTERVAL, "health-interval", 0, "MS", NUM(health_interval_ms), 0, CONFIG_MAX_MS,
	  "active health check: a TCP connect to each upstream every MS\n"
	  "milliseconds; 0 = off (default: 0)." },
	{ OPT_RESOLVE_INTERVAL, "resolve-interval", 0, "SEC", NUM(resolve_interval_s), 0, 86400,
	  "re-resolve upstream host names every SEC seconds; 0 = only at start\n"
	  "and on SIGHUP (default: 30)." },
	{ OPT_IDLE_TIMEOUT, "idle-timeout", 0, "MS", NUM(idle_timeout_ms), 1, CONFIG_MAX_MS,
	  "close a session after MS milliseconds of inactivity: no byte received\n"
	  "from, and no send completed to, either peer (default: 600000)." },
	{ OPT_FIN_TIMEOUT, "fin-timeout", 0, "MS", NUM(fin_timeout_ms), 1, CONFIG_MAX_MS,
	  "once one direction has finished, the inactivity allowed before the\n"
	  "session is closed (default: 30000)." },
	{ OPT_MAX_CONNS, "max-conns", 0, "N", NUM(max_conns), 1, CONFIG_MAX_CONNS_LIMIT,
	  "most client connections open at once; above it new clients wait in\n"
	  "the kernel backlog (default: derived from the open-file limit,\n"
	  "(limit - 32 - 8 x (workers - 1)) / 2)." },
	{ OPT_DRAIN_TIMEOUT, "drain-timeout", 0, "MS", NUM(drain_timeout_ms), 0, CONFIG_MAX_MS,
	  "on SIGTERM/SIGINT, stop accepting and let open sessions finish for up\n"
	  "to MS milliseconds, then close the rest (default: 10000)." },
	{ OPT_WORKERS, "workers", 'w', "N|auto", 0, 0, 0,
	  "worker threads, each with its own ring, buffers and SO_REUSEPORT\n"
	  "listener, sharing nothing; auto = one per CPU (default: 1, at most 64).\n"
	  "--buffers is per worker, --max-conns is split between workers." },
	{ OPT_BUFFER_SIZE, "buffer-size", 0, "BYTES", NUM(buffer_size), CONFIG_MIN_BUFFER_SIZE,
	  CONFIG_MAX_BUFFER_SIZE, "size of each receive buffer, 1024-1048576 (default: 16384)." },
	{ OPT_BUFFERS, "buffers", 0, "N", NUM(buffers), CONFIG_MIN_BUFFERS, CONFIG_MAX_BUFFERS,
	  "receive buffers per worker in the shared pool, a power of two,\n"
	  "64-32768 (default: 2048); pool memory = N x buffer size. When it runs\n"
	  "low, sessions receive into 4 KiB buffers of their own." },
	{ OPT_STATS, "stats", 0, "[HOST]:PORT", 0, 0, 0,
	  "serve Prometheus metrics at GET /metrics on this address, from\n"
	  "worker 0's ring (default: off)." },
	{ OPT_ACCESS_LOG, "access-log", 0, "PATH|-", 0, 0, 0,
	  "append one line per finished session (time, client, upstream, bytes\n"
	  "each way, duration, close reason) to PATH, or stdout for '-'; written\n"
	  "through the ring, never blocking (default: off)." },
	{ OPT_LOG_FORMAT, "log-format", 0, "text|json", 0, 0, 0,
	  "format of the access-log lines (default: text)." },
	{ OPT_SEND_PROXY, "send-proxy", 0, "v1|v2", 0, 0, 0,
	  "send a PROXY protocol header with the client's addresses to the\n"
	  "upstream before any client byte (default: off)." },
	{ OPT_ACCEPT_PROXY, "accept-proxy", 0, NULL, 0, 0, 0,
	  "require a PROXY protocol v1 or v2 header from every client (3 s to\n"
	  "arrive; a missing or malformed one closes the connection); its\n"
	  "addresses are what logs, hashing and --send-proxy use (default: off)." },
	{ OPT_USER, "user", 0, "NAME", 0, 0, 0,
	  "after binding the listeners (so ports below 1024 work), switch to\n"
	  "this user and its groups; exits if that fails (default: stay)." },
	{ OPT_BACKEND, "backend", 0, "io_uring|epoll|auto", 0, 0, 0,
	  "the event backend: auto uses io_uring where it can be set up and falls\n"
	  "back to epoll where it cannot (a container's seccomp profile, the\n"
	  "sysctl kernel.io_uring_disabled), saying why at start; io_uring fails\n"
	  "if it is unavailable; epoll never uses it (default: auto)." },
	{ OPT_LOG_LEVEL, "log-level", 0, "LEVEL", 0, 0, 0,
	  "error, warn, info or debug (default: info). Logs go to stderr." },
	{ OPT_HELP, "help", 'h', NULL, 0, 0, 0, "print this help and exit." },
	{ OPT_VERSION, "version", 'V', NULL, 0, 0, 0, "print the version and exit." },
};
/* clang-format on */

#define NOPTS (sizeof(opts) / sizeof(opts[0]))

void config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->balance = BALANCE_ROUNDROBIN;
	cfg->log_level = LOG_INFO;
	cfg->buffer_size = CONFIG_DEFAULT_BUFFER_SIZE;
	cfg->buffers = CONFIG_DEFAULT_BUFFERS;
	cfg->workers = 1;
	cfg->connect_timeout_ms = CONFIG_DEFAULT_CONNECT_TIMEOUT_MS;
	cfg->retries = CONFIG_DEFAULT_RETRIES;
	cfg->fail_threshold = BACKEND_FAIL_THRESHOLD_DEFAULT;
	cfg->fail_timeout_s = BACKEND_FAIL_TIMEOUT_MS_DEFAULT / 1000;
	cfg->resolve_interval_s = CONFIG_DEFAULT_RESOLVE_INTERVAL_S;
	cfg->idle_timeout_ms = CONFIG_DEFAULT_IDLE_TIMEOUT_MS;
	cfg->fin_timeout_ms = CONFIG_DEFAULT_FIN_TIMEOUT_MS;
	cfg->drain_timeout_ms = CONFIG_DEFAULT_DRAIN_TIMEOUT_MS;
}

void config_usage(FILE *out)
{
	fputs("Usage: uproxy --listen [HOST]:PORT --upstream HOST:PORT [options]\n"
	      "\n"
	      "A TCP (layer 4) proxy on io_uring (or epoll): accepts clients on --listen and\n"
	      "forwards each connection, both ways, to one of the --upstream servers.\n"
	      "\n"
	      "Options:\n",
	      out);
	for (size_t i = 0; i < NOPTS; i++) {
		const struct opt_def *o = &opts[i];
		char head[64];
		const char *h = o->help;

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
	fputs("\nSignals: SIGTERM/SIGINT drain and exit 0; SIGHUP re-reads --config and\n"
	      "re-resolves the upstreams (listen address, workers and buffers need a restart).\n"
	      "Exit status: 0 after SIGINT/SIGTERM or --help/--version, 2 for a usage error,\n"
	      "1 for a run-time failure (unresolvable host, address in use, --backend io_uring\n"
	      "unavailable).\n",
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
	if (comma != NULL) {
		if (strncmp(comma + 1, "weight=", 7) != 0) {
			*why = "expected ',weight=N' after the address";
			return -EINVAL;
		}
		if (parse_u32(comma + 8, 1, BACKEND_WEIGHT_MAX, &out->weight) < 0) {
			*why = "weight must be a whole number from 1 to 256";
			return -EINVAL;
		}
	}
	return 0;
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

/* Where a value came from, for error messages: "" for the command line, "FILE:LINE: ". */
struct origin {
	char where[PATH_MAX + 32];
	bool in_file;
	bool *seen;	       /* per option: given already from this origin */
	bool *upstreams_reset; /* the command line's first --upstream replaces the file's list */
};

static enum config_result apply(struct config *cfg, const struct opt_def *o, const char *val,
				struct origin *org, FILE *out, char *err, size_t errlen)
{
	const char *why = NULL;
	int rc;

	if (org->seen[o->id] && o->id != OPT_UPSTREAM) {
		snprintf(err, errlen, "%s--%s given more than once", org->where, o->name);
		return CONFIG_USAGE;
	}
	org->seen[o->id] = true;
	if (o->field != 0) {
		uint32_t *dst = (uint32_t *)((char *)cfg + o->field);

		rc = parse_u32(val, o->min, o->max, dst);
		if (rc == -ERANGE) {
			snprintf(err, errlen, "%s--%s: %s is out of range (%u-%u)", org->where,
				 o->name, val, o->min, o->max);
			return CONFIG_USAGE;
		}
		if (rc < 0) {
			snprintf(err, errlen, "%s--%s: '%s' is not a whole number", org->where,
				 o->name, val);
			return CONFIG_USAGE;
		}
		if (o->id == OPT_BUFFERS && (cfg->buffers & (cfg->buffers - 1))) {
			snprintf(err, errlen, "%s--buffers %s: must be a power of two", org->where,
				 val);
			return CONFIG_USAGE;
		}
		return CONFIG_OK;
	}
	switch (o->id) {
	case OPT_CONFIG:
		if (org->in_file) {
			snprintf(err, errlen, "%sa config file cannot name another (config %s)",
				 org->where, val);
			return CONFIG_USAGE;
		}
		break; /* read by config_parse before anything else */
	case OPT_LISTEN:
		if (addr_parse(val, &cfg->listen, &why) < 0) {
			snprintf(err, errlen, "%s--listen '%s': %s", org->where, val, why);
			return CONFIG_USAGE;
		}
		break;
	case OPT_ACCESS_LOG:
		if (*val == '\0' || strlen(val) >= sizeof(cfg->access_log)) {
			snprintf(err, errlen, "%s--access-log: bad path '%s'", org->where, val);
			return CONFIG_USAGE;
		}
		strcpy(cfg->access_log, val);
		break;
	case OPT_LOG_FORMAT:
		if (strcmp(val, "text") != 0 && strcmp(val, "json") != 0) {
			snprintf(err, errlen, "%s--log-format '%s': expected text or json",
				 org->where, val);
			return CONFIG_USAGE;
		}
		cfg->log_json = strcmp(val, "json") == 0;
		break;
	case OPT_SEND_PROXY:
		if (strcmp(val, "v1") != 0 && strcmp(val, "v2") != 0) {
			snprintf(err, errlen, "%s--send-proxy '%s': expected v1 or v2", org->where,
				 val);
			return CONFIG_USAGE;
		}
		cfg->send_proxy = val[1] == '1' ? 1 : 2;
		break;
	case OPT_ACCEPT_PROXY:
		cfg->accept_proxy = true;
		break;
	case OPT_USER:
		if (*val == '\0' || strlen(val) >= sizeof(cfg->user)) {
			snprintf(err, errlen, "%s--user: bad name '%s'", org->where, val);
			return CONFIG_USAGE;
		}
		strcpy(cfg->user, val);
		break;
	case OPT_STATS:
		if (addr_parse(val, &cfg->stats, &why) < 0) {
			snprintf(err, errlen, "%s--stats '%s': %s", org->where, val, why);
			return CONFIG_USAGE;
		}
		break;
	case OPT_UPSTREAM:
		if (!org->in_file && !*org->upstreams_reset) {
			cfg->nupstreams = 0;
			*org->upstreams_reset = true;
		}
		if (cfg->nupstreams >= CONFIG_MAX_UPSTREAMS) {
			snprintf(err, errlen, "%smore than %u --upstream entries", org->where,
				 CONFIG_MAX_UPSTREAMS);
			return CONFIG_USAGE;
		}
		if (config_parse_upstream(val, &cfg->upstreams[cfg->nupstreams], &why) < 0) {
			snprintf(err, errlen, "%s--upstream '%s': %s", org->where, val, why);
			return CONFIG_USAGE;
		}
		cfg->nupstreams++;
		break;
	case OPT_BALANCE:
		if (backend_balance_parse(val, &cfg->balance) < 0) {
			snprintf(
				err, errlen,
				"%s--balance '%s': expected roundrobin, leastconn, random2 or hash",
				org->where, val);
			return CONFIG_USAGE;
		}
		break;
	case OPT_LOG_LEVEL:
		if (log_level_parse(val, &cfg->log_level) < 0) {
			snprintf(err, errlen,
				 "%s--log-level '%s': expected error, warn, info or debug",
				 org->where, val);
			return CONFIG_USAGE;
		}
		break;
	case OPT_BACKEND:
		if (strcmp(val, "auto") == 0)
			cfg->backend = LOOP_BACKEND_AUTO;
		else if (strcmp(val, "io_uring") == 0)
			cfg->backend = LOOP_BACKEND_IO_URING;
		else if (strcmp(val, "epoll") == 0)
			cfg->backend = LOOP_BACKEND_EPOLL;
		else {
			snprintf(err, errlen, "%s--backend '%s': expected io_uring, epoll or auto",
				 org->where, val);
			return CONFIG_USAGE;
		}
		break;
	case OPT_WORKERS:
		if (strcmp(val, "auto") == 0) {
			cfg->workers = 0;
			break;
		}
		if (parse_u32(val, 1, CONFIG_MAX_WORKERS, &cfg->workers) < 0) {
			snprintf(err, errlen,
				 "%s--workers '%s': expected auto or a number from 1 to %u",
				 org->where, val, CONFIG_MAX_WORKERS);
			return CONFIG_USAGE;
		}
		break;
	case OPT_HELP:
	case OPT_VERSION:
		if (org->in_file) {
			snprintf(err, errlen, "%s'%s' belongs on the command line", org->where,
				 o->name);
			return CONFIG_USAGE;
		}
		if (o->id == OPT_HELP)
			config_usage(out);
		else
			fprintf(out, "uproxy %s\nbackends: %s\n", UPROXY_VERSION,
				LOOP_BACKENDS_BUILT);
		return CONFIG_EXIT;
	default:
		snprintf(err, errlen, "%s--%s: not handled", org->where, o->name);
		return CONFIG_USAGE;
	}
	return CONFIG_OK;
}

enum config_result config_parse_text(struct config *cfg, const char *text, size_t len,
				     const char *name, char *err, size_t errlen)
{
	bool seen[OPT__COUNT] = { false }, reset = true;
	struct origin org = { .in_file = true, .seen = seen, .upstreams_reset = &reset };
	const char *p = text, *end = text + len;

	for (unsigned int lineno = 1; p < end; lineno++) {
		const char *eol = memchr(p, '\n', (size_t)(end - p));
		const char *e = eol ? eol : end;
		char line[1024], *k, *v, *hash;
		const struct opt_def *o;
		enum config_result r;
		size_t n = (size_t)(e - p);

		snprintf(org.where, sizeof(org.where), "%s:%u: ", name, lineno);
		if (n >= sizeof(line)) {
			snprintf(err, errlen, "%sline longer than %zu characters", org.where,
				 sizeof(line) - 1);
			return CONFIG_USAGE;
		}
		memcpy(line, p, n);
		line[n] = '\0';
		p = eol ? eol + 1 : end;
		if (memchr(line, '\0', n) != NULL) {
			snprintf(err, errlen, "%sNUL byte in the file", org.where);
			return CONFIG_USAGE;
		}
		hash = strchr(line, '#');
		if (hash != NULL)
			*hash = '\0';
		k = line;
		while (isspace((unsigned char)*k))
			k++;
		for (char *t = k + strlen(k); t > k && isspace((unsigned char)t[-1]);)
			*--t = '\0';
		if (*k == '\0')
			continue;
		v = k;
		while (*v && !isspace((unsigned char)*v) && *v != '=')
			v++;
		if (*v != '\0') {
			*v++ = '\0';
			while (isspace((unsigned char)*v) || *v == '=')
				v++;
		}
		if (k[0] == '-') {
			snprintf(err, errlen, "%swrite '%s' without the leading dashes", org.where,
				 k);
			return CONFIG_USAGE;
		}
		o = find_long(k, strlen(k));
		if (o == NULL) {
			snprintf(err, errlen, "%sunknown option '%s'", org.where, k);
			return CONFIG_USAGE;
		}
		if (o->arg != NULL && *v == '\0') {
			snprintf(err, errlen, "%s'%s' needs a value", org.where, k);
			return CONFIG_USAGE;
		}
		if (o->arg == NULL && *v != '\0') {
			snprintf(err, errlen, "%s'%s' takes no value", org.where, k);
			return CONFIG_USAGE;
		}
		r = apply(cfg, o, v, &org, NULL, err, errlen);
		if (r != CONFIG_OK)
			return r;
	}
	return CONFIG_OK;
}

static enum config_result read_file(struct config *cfg, const char *path, char *err, size_t errlen)
{
	/* A config file is a few dozen lines; 1 MiB is a generous bound against mistakes. */
	enum { MAX_FILE = 1 << 20 };
	FILE *f = fopen(path, "r");
	char *buf;
	size_t n;
	enum config_result r;

	if (f == NULL) {
		snprintf(err, errlen, "cannot read config file '%s': %s", path, strerror(errno));
		return CONFIG_USAGE;
	}
	buf = malloc(MAX_FILE + 1);
	if (buf == NULL) {
		fclose(f);
		snprintf(err, errlen, "out of memory reading '%s'", path);
		return CONFIG_USAGE;
	}
	n = fread(buf, 1, MAX_FILE + 1, f);
	if (ferror(f) || n > MAX_FILE) {
		snprintf(err, errlen, "cannot read config file '%s': %s", path,
			 n > MAX_FILE ? "larger than 1 MiB" : strerror(errno));
		r = CONFIG_USAGE;
	} else {
		r = config_parse_text(cfg, buf, n, path, err, errlen);
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
		if (o == NULL) {
			snprintf(err, errlen, "unknown option '%.*s' (see --help)", (int)(len + 2),
				 arg);
			return CONFIG_USAGE;
		}
		if (eq != NULL) {
			if (o->arg == NULL) {
				snprintf(err, errlen, "option --%s takes no value", o->name);
				return CONFIG_USAGE;
			}
			val = eq + 1;
		}
	} else if (arg[0] == '-' && arg[1] != '\0' && arg[1] != '-' && arg[2] == '\0') {
		o = find_short(arg[1]);
		if (o == NULL) {
			snprintf(err, errlen, "unknown option '%s' (see --help)", arg);
			return CONFIG_USAGE;
		}
	} else {
		snprintf(err, errlen, "unexpected argument '%s' (see --help)", arg);
		return CONFIG_USAGE;
	}
	if (o->arg != NULL && val == NULL) {
		if (*i + 1 >= argc) {
			snprintf(err, errlen, "option --%s needs a value", o->name);
			return CONFIG_USAGE;
		}
		val = argv[++*i];
	}
	*po = o;
	*pval = val;
	return CONFIG_OK;
}

enum config_result config_parse(struct config *cfg, int argc, char **argv, FILE *out, char *err,
				size_t errlen)
{
	bool seen[OPT__COUNT] = { false }, reset = false;
	struct origin org = {
		.where = "", .in_file = false, .seen = seen, .upstreams_reset = &reset
	};
	const struct opt_def *o;
	const char *val;
	enum config_result r;

	config_defaults(cfg);
	err[0] = '\0';
	/* First pass: syntax, --help/--version, and where the config file is. */
	for (int i = 1; i < argc; i++) {
		r = next_arg(argc, argv, &i, &o, &val, err, errlen);
		if (r != CONFIG_OK)
			return r;
		if (o->id == OPT_HELP || o->id == OPT_VERSION)
			return apply(cfg, o, val, &org, out, err, errlen);
		if (o->id == OPT_CONFIG) {
			if (cfg->config_path[0] != '\0') {
				snprintf(err, errlen, "--config given more than once");
				return CONFIG_USAGE;
			}
			if (strlen(val) >= sizeof(cfg->config_path) || *val == '\0') {
				snprintf(err, errlen, "--config: bad path '%s'", val);
				return CONFIG_USAGE;
			}
			strcpy(cfg->config_path, val);
		}
	}
	if (cfg->config_path[0] != '\0') {
		r = read_file(cfg, cfg->config_path, err, errlen);
		if (r != CONFIG_OK)
			return r;
	}
	/* Second pass: the command line on top of the file. */
	for (int i = 1; i < argc; i++) {
		next_arg(argc, argv, &i, &o, &val, err, errlen);
		r = apply(cfg, o, val, &org, out, err, errlen);
		if (r != CONFIG_OK)
			return r;
	}
	/* Socket-activated (systemd passes listening sockets), --listen may be left out. */
	if (cfg->listen.port == 0 && getenv("LISTEN_FDS") == NULL &&
	    getenv("UPROXY_SOCKET_ACTIVATED") == NULL) {
		snprintf(err, errlen, "missing --listen [HOST]:PORT (see --help)");
		return CONFIG_USAGE;
	}
	if (cfg->nupstreams == 0) {
		snprintf(err, errlen, "missing --upstream HOST:PORT (see --help)");
		return CONFIG_USAGE;
	}
	return CONFIG_OK;
}
