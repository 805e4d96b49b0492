/* config: parses the command line once into struct config. Every rejected input produces one
 * sentence naming the option and the problem; nothing here opens a socket or resolves a name. */
#include "uproxy/config.h"

#include <ctype.h>
#include <errno.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

enum opt_id {
	OPT_LISTEN,
	OPT_UPSTREAM,
	OPT_LOG_LEVEL,
	OPT_BUFFER_SIZE,
	OPT_BUFFERS,
	OPT_MAX_CONNS,
	OPT_WORKERS,
	OPT_HELP,
	OPT_VERSION,
};

struct opt_def {
	enum opt_id id;
	const char *name; /* long name without "--" */
	char short_name;  /* 0 if none */
	bool has_arg;
};

static const struct opt_def opts[] = {
	{ OPT_LISTEN, "listen", 'l', true },
	{ OPT_UPSTREAM, "upstream", 'u', true },
	{ OPT_LOG_LEVEL, "log-level", 0, true },
	{ OPT_BUFFER_SIZE, "buffer-size", 0, true },
	{ OPT_BUFFERS, "buffers", 0, true },
	{ OPT_MAX_CONNS, "max-conns", 0, true },
	{ OPT_WORKERS, "workers", 'w', true },
	{ OPT_HELP, "help", 'h', false },
	{ OPT_VERSION, "version", 'V', false },
};

void config_defaults(struct config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->log_level = LOG_INFO;
	cfg->buffer_size = CONFIG_DEFAULT_BUFFER_SIZE;
	cfg->buffers = CONFIG_DEFAULT_BUFFERS;
	cfg->max_conns = 0;
	cfg->workers = 1;
}

void config_usage(FILE *out)
{
	fprintf(out,
		"Usage: uproxy --listen [HOST]:PORT --upstream HOST:PORT [options]\n"
		"\n"
		"A TCP (layer 4) proxy on io_uring: accepts clients on --listen and forwards each\n"
		"connection, both ways, to --upstream.\n"
		"\n"
		"Options:\n"
		"  -l, --listen [HOST]:PORT   address to accept clients on (required).\n"
		"                             ':PORT' = every IPv4 and IPv6 address; IPv6 in brackets,\n"
		"                             e.g. [::1]:8080; a host name is resolved at start-up.\n"
		"  -u, --upstream HOST:PORT   where to forward connections (required). A host name is\n"
		"                             resolved at start-up; its addresses are tried in order\n"
		"                             when a connect fails.\n"
		"      --log-level LEVEL      error, warn, info or debug (default: info). Logs go to\n"
		"                             stderr.\n"
		"      --buffer-size BYTES    size of each receive buffer, %u-%u (default: %u).\n"
		"      --buffers N            receive buffers per worker, a power of two, %u-%u\n"
		"                             (default: %u); memory = N x buffer size.\n"
		"      --max-conns N          most client connections open at once; above it new\n"
		"                             clients wait in the kernel backlog (default: derived\n"
		"                             from the open-file limit, (limit - 32) / 2).\n"
		"  -w, --workers N|auto       worker threads, each with its own ring, buffers and\n"
		"                             SO_REUSEPORT listener, sharing nothing; auto = one per\n"
		"                             CPU (default: 1; at most %u). --buffers is per worker,\n"
		"                             --max-conns is split between workers.\n"
		"  -h, --help                 print this help and exit.\n"
		"  -V, --version              print the version and exit.\n"
		"\n"
		"Exit status: 0 after SIGINT/SIGTERM or --help/--version, 2 for a usage error,\n"
		"1 for a run-time failure (unresolvable host, address in use, io_uring unavailable).\n",
		CONFIG_MIN_BUFFER_SIZE, CONFIG_MAX_BUFFER_SIZE, CONFIG_DEFAULT_BUFFER_SIZE,
		CONFIG_MIN_BUFFERS, CONFIG_MAX_BUFFERS, CONFIG_DEFAULT_BUFFERS, CONFIG_MAX_WORKERS);
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

static const struct opt_def *find_long(const char *name, size_t len)
{
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		if (strlen(opts[i].name) == len && strncmp(opts[i].name, name, len) == 0)
			return &opts[i];
	}
	return NULL;
}

static const struct opt_def *find_short(char c)
{
	for (size_t i = 0; i < sizeof(opts) / sizeof(opts[0]); i++) {
		if (opts[i].short_name == c)
			return &opts[i];
	}
	return NULL;
}

static enum config_result number_error(char *err, size_t errlen, const char *opt, const char *val,
				       int rc, uint32_t min, uint32_t max)
{
	if (rc == -ERANGE)
		snprintf(err, errlen, "--%s: %s is out of range (%u-%u)", opt, val, min, max);
	else
		snprintf(err, errlen, "--%s: '%s' is not a whole number", opt, val);
	return CONFIG_USAGE;
}

static enum config_result apply(struct config *cfg, const struct opt_def *o, const char *val,
				bool *seen, FILE *out, char *err, size_t errlen)
{
	const char *why = NULL;
	int rc;

	switch (o->id) {
	case OPT_LISTEN:
	case OPT_UPSTREAM: {
		struct hostport *hp = o->id == OPT_LISTEN ? &cfg->listen : &cfg->upstream;

		if (seen[o->id]) {
			snprintf(err, errlen, "--%s given more than once", o->name);
			return CONFIG_USAGE;
		}
		if (addr_parse(val, hp, &why) < 0) {
			snprintf(err, errlen, "--%s '%s': %s", o->name, val, why);
			return CONFIG_USAGE;
		}
		if (o->id == OPT_UPSTREAM && hp->any) {
			snprintf(err, errlen, "--upstream '%s': a host is required (HOST:PORT)", val);
			return CONFIG_USAGE;
		}
		break;
	}
	case OPT_LOG_LEVEL:
		if (log_level_parse(val, &cfg->log_level) < 0) {
			snprintf(err, errlen, "--log-level '%s': expected error, warn, info or debug",
				 val);
			return CONFIG_USAGE;
		}
		break;
	case OPT_BUFFER_SIZE:
		rc = parse_u32(val, CONFIG_MIN_BUFFER_SIZE, CONFIG_MAX_BUFFER_SIZE,
			       &cfg->buffer_size);
		if (rc < 0)
			return number_error(err, errlen, o->name, val, rc, CONFIG_MIN_BUFFER_SIZE,
					    CONFIG_MAX_BUFFER_SIZE);
		break;
	case OPT_BUFFERS:
		rc = parse_u32(val, CONFIG_MIN_BUFFERS, CONFIG_MAX_BUFFERS, &cfg->buffers);
		if (rc < 0)
			return number_error(err, errlen, o->name, val, rc, CONFIG_MIN_BUFFERS,
					    CONFIG_MAX_BUFFERS);
		if (cfg->buffers & (cfg->buffers - 1)) {
			snprintf(err, errlen, "--buffers %s: must be a power of two", val);
			return CONFIG_USAGE;
		}
		break;
	case OPT_MAX_CONNS:
		rc = parse_u32(val, 1, CONFIG_MAX_CONNS_LIMIT, &cfg->max_conns);
		if (rc < 0)
			return number_error(err, errlen, o->name, val, rc, 1,
					    CONFIG_MAX_CONNS_LIMIT);
		break;
	case OPT_WORKERS:
		if (strcmp(val, "auto") == 0) {
			cfg->workers = 0;
			break;
		}
		rc = parse_u32(val, 1, CONFIG_MAX_WORKERS, &cfg->workers);
		if (rc < 0) {
			snprintf(err, errlen, "--workers '%s': expected auto or a number from 1 to %u",
				 val, CONFIG_MAX_WORKERS);
			return CONFIG_USAGE;
		}
		break;
	case OPT_HELP:
		config_usage(out);
		return CONFIG_EXIT;
	case OPT_VERSION:
		fprintf(out, "uproxy %s\n", UPROXY_VERSION);
		return CONFIG_EXIT;
	}
	seen[o->id] = true;
	return CONFIG_OK;
}

enum config_result config_parse(struct config *cfg, int argc, char **argv, FILE *out, char *err,
				size_t errlen)
{
	bool seen[OPT_VERSION + 1] = { false };

	config_defaults(cfg);
	err[0] = '\0';
	for (int i = 1; i < argc; i++) {
		const char *arg = argv[i], *val = NULL;
		const struct opt_def *o;
		enum config_result r;

		if (arg[0] == '-' && arg[1] == '-' && arg[2] != '\0') {
			const char *eq = strchr(arg + 2, '=');
			size_t len = eq ? (size_t)(eq - arg - 2) : strlen(arg + 2);

			o = find_long(arg + 2, len);
			if (o == NULL) {
				snprintf(err, errlen, "unknown option '%.*s' (see --help)",
					 (int)(len + 2), arg);
				return CONFIG_USAGE;
			}
			if (eq != NULL) {
				if (!o->has_arg) {
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
		if (o->has_arg && val == NULL) {
			if (i + 1 >= argc) {
				snprintf(err, errlen, "option --%s needs a value", o->name);
				return CONFIG_USAGE;
			}
			val = argv[++i];
		}
		r = apply(cfg, o, val, seen, out, err, errlen);
		if (r != CONFIG_OK)
			return r;
	}
	if (!seen[OPT_LISTEN]) {
		snprintf(err, errlen, "missing --listen [HOST]:PORT (see --help)");
		return CONFIG_USAGE;
	}
	if (!seen[OPT_UPSTREAM]) {
		snprintf(err, errlen, "missing --upstream HOST:PORT (see --help)");
		return CONFIG_USAGE;
	}
	return CONFIG_OK;
}
