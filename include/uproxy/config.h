/* config: the command line and config file turned into one immutable struct config, with every
 * validation error explained (file errors name the file and line). Reads the config file but
 * opens no socket, resolves no name and touches no ring; frozen once parsed. */
#ifndef UPROXY_CONFIG_H
#define UPROXY_CONFIG_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "uproxy/addr.h"
#include "uproxy/backend.h"
#include "uproxy/log.h"
#include "uproxy/loop.h"

/* 16 KiB matches the kernel's typical TSO chunk and HAProxy's bufsize; 2048 of them (32 MiB per
 * worker) keep 1,000 busy connections fed (see bench/RESULTS.md). */
#define CONFIG_DEFAULT_BUFFER_SIZE 16384u
#define CONFIG_DEFAULT_BUFFERS	   2048u
#define CONFIG_MIN_BUFFER_SIZE	   1024u
#define CONFIG_MAX_BUFFER_SIZE	   (1u << 20)
#define CONFIG_MIN_BUFFERS	   64u
#define CONFIG_MAX_BUFFERS	   32768u /* buffer ids are 16 bits; the ring holds 2^15 */
#define CONFIG_MAX_CONNS_LIMIT	   1000000u
#define CONFIG_MAX_WORKERS	   64u
#define CONFIG_MAX_UPSTREAMS	   64u	     /* --upstream entries; each may resolve to many */
#define CONFIG_MAX_MS		   86400000u /* one day: the longest timeout accepted */

#define CONFIG_DEFAULT_CONNECT_TIMEOUT_MS 5000u
#define CONFIG_DEFAULT_RETRIES		  2u
#define CONFIG_DEFAULT_RESOLVE_INTERVAL_S 30u
#define CONFIG_DEFAULT_IDLE_TIMEOUT_MS	  600000u
#define CONFIG_DEFAULT_FIN_TIMEOUT_MS	  30000u
#define CONFIG_DEFAULT_DRAIN_TIMEOUT_MS	  10000u

struct config_upstream {
	struct hostport hp;
	uint32_t weight; /* 1..BACKEND_WEIGHT_MAX */
	bool backup;	 /* ",backup": used only while every primary is down */
};

#define CONFIG_NAME_MAX	       33 /* listener and pool names: [A-Za-z0-9_.-]{1,32} */
#define CONFIG_MAX_LISTENERS   16
#define CONFIG_MAX_POOLS       32 /* named pools plus one implicit pool per listener */
#define CONFIG_MAX_ACL	       64 /* allow/deny lines per listener */
#define CONFIG_MAX_SNI_ROUTES  64 /* sni-route lines per listener */
#define CONFIG_SNI_PATTERN_MAX 256
#define CONFIG_WHERE_MAX       (PATH_MAX + 16) /* "FILE:LINE" */

#define CONFIG_DEFAULT_SNI_TIMEOUT_MS 5000u
#define CONFIG_DEFAULT_CLIENT_TABLE   16384u
#define CONFIG_MAX_CLIENT_TABLE	      (1u << 22)
#define CONFIG_DEFAULT_UNIX_MODE      0666u
#define CONFIG_NO_POOL		      UINT16_MAX

/* One upstream pool: a [pool NAME] section, or a listener's own upstream lines. */
struct config_pool {
	char name[CONFIG_NAME_MAX];
	char where[CONFIG_WHERE_MAX]; /* "FILE:LINE" of its section, or "command line" */
	struct config_upstream upstreams[CONFIG_MAX_UPSTREAMS];
	uint32_t nupstreams;
	enum backend_balance balance;
	uint32_t connect_timeout_ms;
	uint32_t retries;
	uint32_t fail_threshold;
	uint32_t fail_timeout_s;
	uint32_t health_interval_ms; /* 0: no active health checks */
};

/* One allow/deny line: family AF_INET or AF_INET6, or AF_UNSPEC for "all". */
struct config_cidr {
	uint8_t addr[16]; /* network byte order; IPv4 in the first 4 bytes */
	uint8_t family;
	uint8_t prefix; /* 0..32 or 0..128 */
	bool allow;
};

struct config_sni_route {
	char pattern[CONFIG_SNI_PATTERN_MAX]; /* lower case; "*.example.com" or an exact name */
	uint16_t pool;			      /* index into config.pools */
};

/* TCP keepalive on one side's sockets (keepalive-client, keepalive-upstream). */
struct config_keepalive {
	bool on;
	uint32_t idle_s, interval_s, count;
};

/* One listener: a [listener NAME] section, or the command line's --listen (named "default"). */
struct config_listener {
	char name[CONFIG_NAME_MAX];
	char where[CONFIG_WHERE_MAX]; /* "FILE:LINE" of its section or listen line */
	struct hostport listen;	      /* unix: hp.unix_path set */
	uint32_t unix_mode;	      /* permissions of a unix: socket file */
	uint16_t pool;		      /* default pool (config.pools index), or CONFIG_NO_POOL */
	uint32_t idle_timeout_ms;
	uint32_t fin_timeout_ms;
	uint32_t drain_timeout_ms;
	char access_log[PATH_MAX]; /* empty: off, "-": stdout */
	bool log_json;
	uint8_t send_proxy; /* 0 off, 1 or 2 */
	bool accept_proxy;
	struct config_cidr acl[CONFIG_MAX_ACL];
	uint32_t nacl;
	uint32_t max_conns_per_client; /* 0: off */
	uint32_t rate_per_client;      /* new connections per second; 0: off */
	uint32_t rate_burst;	       /* 0: = rate_per_client */
	uint32_t client_table_size;
	bool client_table_fail_open;
	struct config_sni_route sni_routes[CONFIG_MAX_SNI_ROUTES];
	uint32_t nsni_routes;	/* > 0: the pool is chosen from the ClientHello's server name */
	bool sni_missing_close; /* no TLS or no SNI: close (else the default pool) */
	uint32_t sni_timeout_ms;
	struct config_keepalive keepalive[2]; /* [SIDE_CLIENT], [SIDE_UPSTREAM] */
};

struct config {
	char config_path[PATH_MAX]; /* empty: no config file */
	bool check;		    /* --check: validate and exit */
	struct hostport stats;	    /* --stats; port 0: off */
	char user[64];		    /* --user; empty: keep the current user */
	enum log_level log_level;
	uint32_t buffer_size;
	uint32_t buffers;
	uint32_t max_conns;	     /* 0: derive from RLIMIT_NOFILE at start-up */
	uint32_t workers;	     /* 0: one per CPU this process may run on ("auto") */
	uint32_t resolve_interval_s; /* 0: resolve only at start-up (and on SIGHUP) */
	enum loop_backend backend;   /* --backend; main resolves auto once, before the workers */
	struct config_pool pools[CONFIG_MAX_POOLS];
	uint32_t npools;
	struct config_listener listeners[CONFIG_MAX_LISTENERS];
	uint32_t nlisteners;
};

enum config_result {
	CONFIG_OK = 0,	 /* run with the config */
	CONFIG_EXIT = 1, /* --help or --version was printed: exit 0 */
	CONFIG_USAGE = 2 /* err holds the reason: exit 2 */
};

void config_defaults(struct config *cfg);

/* Parses argv (argv[0] is the program name), reading --config FILE first when given; options
 * on the command line override the file's. --help/--version text goes to out. */
enum config_result config_parse(struct config *cfg, int argc, char **argv, FILE *out, char *err,
				size_t errlen);

/* Applies the text of a config file (name is used in errors) on top of cfg. Exposed for tests
 * and the fuzzer; config_parse calls it. */
enum config_result config_parse_text(struct config *cfg, const char *text, size_t len,
				     const char *name, char *err, size_t errlen);

/* Parses "HOST:PORT[,weight=N]" into *out; returns 0 or -EINVAL with why. */
int config_parse_upstream(const char *s, struct config_upstream *out, const char **why);

void config_usage(FILE *out);

/* The listener's default pool, or NULL (an SNI listener without one). */
const struct config_pool *config_listener_pool(const struct config *cfg,
					       const struct config_listener *l);
/* Index of the listener / pool of that name, or -1. */
int config_find_listener(const struct config *cfg, const char *name);
int config_find_pool(const struct config *cfg, const char *name);
/* Whole-struct comparisons, for SIGHUP (both come from the same parser, padding zeroed). */
bool config_listener_equal(const struct config_listener *a, const struct config_listener *b);
bool config_pool_equal(const struct config_pool *a, const struct config_pool *b);

#endif
