/* Unit tests for config: defaults, every option, and every usage error with its message. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "uproxy/config.h"

static enum config_result parse(struct config *cfg, char *err, size_t errlen, FILE *out, ...)
{
	char *argv[32] = { "uproxy" };
	int argc = 1;
	va_list ap;

	va_start(ap, out);
	for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 31;)
		argv[argc++] = a;
	va_end(ap);
	return config_parse(cfg, argc, argv, out, err, errlen);
}

#define PARSE(cfg, err, ...) parse(cfg, err, sizeof(err), NULL, __VA_ARGS__, (char *)NULL)

static void usage_error(const char *needle, ...)
{
	char *argv[32] = { "uproxy" };
	int argc = 1;
	struct config cfg;
	char err[512];
	va_list ap;

	va_start(ap, needle);
	for (char *a; (a = va_arg(ap, char *)) != NULL && argc < 31;)
		argv[argc++] = a;
	va_end(ap);
	cr_assert_eq(config_parse(&cfg, argc, argv, NULL, err, sizeof(err)), CONFIG_USAGE,
		     "expected a usage error mentioning '%s'", needle);
	cr_assert(strstr(err, needle) != NULL, "error '%s' lacks '%s'", err, needle);
}

#define USAGE(needle, ...) usage_error(needle, __VA_ARGS__, (char *)NULL)

Test(config, minimal_with_defaults)
{
	struct config cfg;
	char err[256];

	cr_assert_eq(PARSE(&cfg, err, "--listen", ":8080", "--upstream", "127.0.0.1:80"), CONFIG_OK,
		     "%s", err);
	cr_assert(cfg.listeners[0].listen.any);
	cr_assert_eq(cfg.listeners[0].listen.port, 8080);
	cr_assert_eq(cfg.pools[0].nupstreams, 1);
	cr_assert_str_eq(cfg.pools[0].upstreams[0].hp.host, "127.0.0.1");
	cr_assert_eq(cfg.pools[0].upstreams[0].hp.port, 80);
	cr_assert_eq(cfg.pools[0].upstreams[0].weight, 1);
	cr_assert_eq(cfg.pools[0].balance, BALANCE_ROUNDROBIN);
	cr_assert_eq(cfg.pools[0].connect_timeout_ms, 5000);
	cr_assert_eq(cfg.pools[0].retries, 2);
	cr_assert_eq(cfg.pools[0].fail_threshold, 3);
	cr_assert_eq(cfg.pools[0].fail_timeout_s, 10);
	cr_assert_eq(cfg.pools[0].health_interval_ms, 0);
	cr_assert_eq(cfg.resolve_interval_s, 30);
	cr_assert_eq(cfg.listeners[0].idle_timeout_ms, 600000);
	cr_assert_eq(cfg.listeners[0].fin_timeout_ms, 30000);
	cr_assert_eq(cfg.listeners[0].drain_timeout_ms, 10000);
	cr_assert_eq(cfg.log_level, LOG_INFO);
	cr_assert_eq(cfg.buffer_size, CONFIG_DEFAULT_BUFFER_SIZE);
	cr_assert_eq(cfg.buffers, CONFIG_DEFAULT_BUFFERS);
	cr_assert_eq(cfg.max_conns, 0);
	cr_assert_eq(cfg.workers, 1);
}

Test(config, workers)
{
	struct config cfg;
	char err[256];

	cr_assert_eq(PARSE(&cfg, err, "-l", ":1", "-u", "a:1", "--workers", "auto"), CONFIG_OK);
	cr_assert_eq(cfg.workers, 0);
	cr_assert_eq(PARSE(&cfg, err, "-l", ":1", "-u", "a:1", "-w", "2"), CONFIG_OK);
	cr_assert_eq(cfg.workers, 2);
	USAGE("--workers '0'", "--workers", "0");
	USAGE("--workers '65'", "--workers", "65");
	USAGE("--workers 'many'", "--workers", "many");
}

Test(config, every_option_and_form)
{
	struct config cfg;
	char err[256];

	cr_assert_eq(PARSE(&cfg, err, "-l", "[::1]:9000", "-u", "localhost:81", "--log-level=debug",
			   "--buffer-size", "65536", "--buffers=4096", "--max-conns", "100"),
		     CONFIG_OK, "%s", err);
	cr_assert_str_eq(cfg.listeners[0].listen.host, "::1");
	cr_assert_eq(cfg.listeners[0].listen.port, 9000);
	cr_assert_str_eq(cfg.pools[0].upstreams[0].hp.host, "localhost");
	cr_assert_eq(cfg.log_level, LOG_DEBUG);
	cr_assert_eq(cfg.buffer_size, 65536);
	cr_assert_eq(cfg.buffers, 4096);
	cr_assert_eq(cfg.max_conns, 100);
}

Test(config, help_and_version_exit_zero)
{
	struct config cfg;
	char err[256], *text = NULL;
	size_t len = 0;
	FILE *out = open_memstream(&text, &len);
	const char *names[] = {
		"--listen",	      "--upstream",	  "--log-level",    "--buffer-size",
		"--buffers",	      "--max-conns",	  "--workers",	    "--help",
		"--version",	      "--config",	  "--balance",	    "--connect-timeout",
		"--retries",	      "--fail-threshold", "--fail-timeout", "--health-interval",
		"--resolve-interval", "--idle-timeout",	  "--fin-timeout",  "--drain-timeout"
	};

	cr_assert_eq(parse(&cfg, err, sizeof(err), out, "--help", (char *)NULL), CONFIG_EXIT);
	fflush(out);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		cr_assert(strstr(text, names[i]) != NULL, "--help lacks %s", names[i]);
	cr_assert(strstr(text, "default") != NULL);
	fclose(out);
	free(text);
	text = NULL;
	out = open_memstream(&text, &len);
	cr_assert_eq(parse(&cfg, err, sizeof(err), out, "-V", (char *)NULL), CONFIG_EXIT);
	fflush(out);
	cr_assert(strstr(text, UPROXY_VERSION) != NULL);
	fclose(out);
	free(text);
}

Test(config, missing_required)
{
	USAGE("missing --upstream", "--listen", ":8080");
	USAGE("missing --listen", "--upstream", "127.0.0.1:80");
	USAGE("missing --listen", "--log-level", "info");
}

Test(config, unknown_and_malformed_options)
{
	USAGE("unknown option '--bogus'", "--bogus", "--listen", ":1", "--upstream", "a:1");
	USAGE("unknown option '-x'", "-x");
	USAGE("unexpected argument 'stray'", "stray");
	USAGE("needs a value", "--listen");
	USAGE("takes no value", "--help=yes");
	USAGE("more than once", "--listen", ":1", "--listen", ":2", "--upstream", "a:1");
	USAGE("more than once", "--retries", "1", "--retries", "2");
}

Test(config, bad_addresses)
{
	USAGE("port 0", "--listen", ":0", "--upstream", "a:1");
	USAGE("out of range", "--listen", ":65536", "--upstream", "a:1");
	USAGE("--upstream 'a:0'", "--listen", ":1", "--upstream", "a:0");
	USAGE("weight must be", "--listen", ":1", "--upstream", "a:1,weight=0");
	USAGE("weight must be", "--listen", ":1", "--upstream", "a:1,weight=257");
	USAGE("expected ',weight=N'", "--listen", ":1", "--upstream", "a:1,w=2");
	USAGE("missing ':PORT'", "--listen", "127.0.0.1", "--upstream", "a:1");
	USAGE("brackets", "--listen", ":1", "--upstream", "::1:80");
	USAGE("a host is required", "--listen", ":1", "--upstream", ":80");
}

Test(config, bad_values)
{
	USAGE("--log-level 'loud'", "--log-level", "loud");
	USAGE("--buffer-size: 100 is out of range", "--buffer-size", "100");
	USAGE("--buffer-size: '16k' is not a whole number", "--buffer-size", "16k");
	USAGE("--buffers 1000: must be a power of two", "--buffers", "1000");
	USAGE("--buffers: 65536 is out of range", "--buffers", "65536");
	USAGE("--max-conns: 0 is out of range", "--max-conns", "0");
	USAGE("--max-conns: '-5' is not a whole number", "--max-conns", "-5");
	USAGE("--max-conns: 99999999999999 is out of range", "--max-conns", "99999999999999");
}

Test(config, upstream_pool_and_policies)
{
	struct config cfg;
	char err[256];

	cr_assert_eq(PARSE(&cfg, err, "-l", ":1", "-u", "a:1,weight=3", "-u", "[::1]:2",
			   "--balance", "hash", "--retries", "5", "--connect-timeout", "250",
			   "--fail-threshold", "1", "--fail-timeout", "2", "--health-interval",
			   "500", "--resolve-interval", "0", "--idle-timeout", "1000",
			   "--fin-timeout", "700", "--drain-timeout", "0"),
		     CONFIG_OK, "%s", err);
	cr_assert_eq(cfg.pools[0].nupstreams, 2);
	cr_assert_eq(cfg.pools[0].upstreams[0].weight, 3);
	cr_assert_str_eq(cfg.pools[0].upstreams[1].hp.host, "::1");
	cr_assert_eq(cfg.pools[0].balance, BALANCE_HASH);
	cr_assert_eq(cfg.pools[0].retries, 5);
	cr_assert_eq(cfg.pools[0].connect_timeout_ms, 250);
	cr_assert_eq(cfg.pools[0].fail_threshold, 1);
	cr_assert_eq(cfg.pools[0].fail_timeout_s, 2);
	cr_assert_eq(cfg.pools[0].health_interval_ms, 500);
	cr_assert_eq(cfg.resolve_interval_s, 0);
	cr_assert_eq(cfg.listeners[0].idle_timeout_ms, 1000);
	cr_assert_eq(cfg.listeners[0].fin_timeout_ms, 700);
	cr_assert_eq(cfg.listeners[0].drain_timeout_ms, 0);
	USAGE("--balance 'fastest'", "--balance", "fastest");
	USAGE("--retries: 17 is out of range", "--retries", "17");
	USAGE("--connect-timeout: 0 is out of range", "--connect-timeout", "0");
}

static enum config_result text(struct config *cfg, const char *t, char *err, size_t errlen)
{
	config_defaults(cfg);
	return config_parse_text(cfg, t, strlen(t), "test.conf", err, errlen);
}

Test(config, file_text)
{
	struct config cfg;
	char err[256];

	cr_assert_eq(text(&cfg,
			  "# a comment\n"
			  "listen 127.0.0.1:8080\n"
			  "  upstream = a:1,weight=2   # trailing comment\n"
			  "upstream b:2\n"
			  "\n"
			  "idle-timeout 1234\n",
			  err, sizeof(err)),
		     CONFIG_OK, "%s", err);
	cr_assert_eq(cfg.listeners[0].listen.port, 8080);
	cr_assert_eq(cfg.pools[0].nupstreams, 2);
	cr_assert_eq(cfg.pools[0].upstreams[0].weight, 2);
	cr_assert_str_eq(cfg.pools[0].upstreams[1].hp.host, "b");
	cr_assert_eq(cfg.listeners[0].idle_timeout_ms, 1234);
}

static void file_error(const char *t, const char *needle)
{
	struct config cfg;
	char err[256];

	cr_assert_eq(text(&cfg, t, err, sizeof(err)), CONFIG_USAGE, "accepted: %s", t);
	cr_assert(strstr(err, needle) != NULL, "error '%s' lacks '%s'", err, needle);
}

Test(config, file_errors_name_file_and_line)
{
	file_error("listen :1\nbogus 3\n", "test.conf:2: unknown option 'bogus'");
	file_error("\n\nidle-timeout\n", "test.conf:3: 'idle-timeout' needs a value");
	file_error("--listen :1\n", "test.conf:1: write '--listen' without the leading dashes");
	file_error("listen :0\n", "test.conf:1: --listen ':0': port 0");
	file_error("retries x\n", "test.conf:1: --retries: 'x' is not a whole number");
	file_error("config other.conf\n", "test.conf:1: a config file cannot name another");
	file_error("help\n", "test.conf:1: 'help' belongs on the command line");
	file_error("listen :1\nlisten :2\n", "test.conf:2: --listen given more than once");
}

Test(config, command_line_overrides_file)
{
	char path[] = "/tmp/uproxy-test-conf-XXXXXX";
	int fd = mkstemp(path);
	const char *body = "listen :1111\nupstream a:1\nupstream b:2\nretries 4\n";
	struct config cfg;
	char err[256];

	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, body, strlen(body)), (ssize_t)strlen(body));
	close(fd);
	cr_assert_eq(PARSE(&cfg, err, "--config", path, "--retries", "1", "-u", "c:3"), CONFIG_OK,
		     "%s", err);
	cr_assert_eq(cfg.listeners[0].listen.port, 1111);
	cr_assert_eq(cfg.pools[0].retries, 1);
	cr_assert_eq(cfg.pools[0].nupstreams, 1,
		     "the command line's --upstream replaces the file's list");
	cr_assert_str_eq(cfg.pools[0].upstreams[0].hp.host, "c");
	cr_assert_eq(PARSE(&cfg, err, "--config", path), CONFIG_OK, "%s", err);
	cr_assert_eq(cfg.pools[0].nupstreams, 2);
	cr_assert_eq(cfg.pools[0].retries, 4);
	unlink(path);
	USAGE("cannot read config file '/nonexistent/x.conf'", "--config", "/nonexistent/x.conf");
}

/* ---- issue 12: sections, inheritance, pools, routes, per-listener options ---- */

/* Parses t as test.conf; fails the test with the error if it is refused. */
static void ok_text(struct config *cfg, const char *t)
{
	char err[512];

	cr_assert_eq(text(cfg, t, err, sizeof(err)), CONFIG_OK, "refused: %s\n---\n%s", err, t);
}

/* t is refused with exactly the error want (the whole message, FILE:LINE included). */
static void file_error_is(const char *t, const char *want)
{
	struct config cfg;
	char err[1024];

	cr_assert_eq(text(&cfg, t, err, sizeof(err)), CONFIG_USAGE, "accepted:\n%s", t);
	cr_assert_str_eq(err, want, "got:  %s\nwant: %s\nfor:\n%s", err, want, t);
}

/* Writes body to a new temporary file; its path goes to path (PATH_MAX bytes). */
static void conf_file(char *path, const char *body)
{
	int fd;

	strcpy(path, "/tmp/uproxy-test-conf-XXXXXX");
	fd = mkstemp(path);
	cr_assert_geq(fd, 0);
	cr_assert_eq(write(fd, body, strlen(body)), (ssize_t)strlen(body));
	close(fd);
}

/* A deliberately broad listener/pool: the [pool], the section keys, and their defaults. */
/* clang-format off */
static const char sections_conf[] =
	"workers 2\n"			     /* 1 */
	"idle-timeout 1111\n"		     /* 2: default for every listener */
	"retries 4\n"			     /* 3: default for every pool */
	"keepalive-client 60:10:6\n"	     /* 4 */
	"deny all\n"			     /* 5 */
	"[pool api]\n"			     /* 6 */
	"upstream 127.0.0.1:9001,weight=2\n" /* 7 */
	"upstream 127.0.0.1:9009,backup\n"   /* 8 */
	"balance leastconn\n"		     /* 9 */
	"\n"				     /* 10 */
	"[listener web]   # the web site\n"  /* 11 */
	"listen 127.0.0.1:8080\n"	     /* 12 */
	"upstream 127.0.0.1:9000\n"	     /* 13 */
	"connect-timeout 750\n"		     /* 14: its implicit pool's */
	"[listener api]\n"		     /* 15 */
	"listen 127.0.0.1:8081\n"	     /* 16 */
	"pool api\n"			     /* 17 */
	"idle-timeout 2222\n"		     /* 18 */
	"keepalive-client off\n"	     /* 19 */
	"allow all\n";			     /* 20 */
/* clang-format on */

Test(config, sections_inherit_the_top_level_and_override_it)
{
	struct config cfg;
	const struct config_listener *web, *api;

	ok_text(&cfg, sections_conf);
	cr_assert_eq(cfg.workers, 2);
	/* no top-level listen: only the two sections, in file order */
	cr_assert_eq(cfg.nlisteners, 2);
	web = &cfg.listeners[0];
	api = &cfg.listeners[1];
	cr_assert_str_eq(web->name, "web");
	cr_assert_str_eq(web->where, "test.conf:11");
	cr_assert_str_eq(api->name, "api");
	cr_assert_str_eq(api->where, "test.conf:15");
	cr_assert_eq(web->listen.port, 8080);
	cr_assert_str_eq(web->listen.host, "127.0.0.1");
	cr_assert_eq(api->listen.port, 8081);
	/* named pools first, then one implicit pool per listener with upstream lines */
	cr_assert_eq(cfg.npools, 2);
	cr_assert_str_eq(cfg.pools[0].name, "api");
	cr_assert_str_eq(cfg.pools[0].where, "test.conf:6");
	cr_assert_str_eq(cfg.pools[1].name, "web");
	cr_assert_str_eq(cfg.pools[1].where, "test.conf:11");
	cr_assert_eq(web->pool, 1);
	cr_assert_eq(api->pool, 0);
	cr_assert_eq(config_listener_pool(&cfg, web), &cfg.pools[1]);
	cr_assert_eq(config_listener_pool(&cfg, api), &cfg.pools[0]);
	cr_assert_eq(config_find_listener(&cfg, "api"), 1);
	cr_assert_eq(config_find_listener(&cfg, "web"), 0);
	cr_assert_eq(config_find_listener(&cfg, "default"), -1);
	cr_assert_eq(config_find_pool(&cfg, "web"), 1);
	cr_assert_eq(config_find_pool(&cfg, "nope"), -1);
	/* listener keys: inherited unless the section sets its own */
	cr_assert_eq(web->idle_timeout_ms, 1111);
	cr_assert_eq(api->idle_timeout_ms, 2222);
	cr_assert_eq(web->fin_timeout_ms, 30000);
	cr_assert_eq(api->fin_timeout_ms, 30000);
	cr_assert(web->keepalive[0].on);
	cr_assert_eq(web->keepalive[0].idle_s, 60);
	cr_assert_eq(web->keepalive[0].interval_s, 10);
	cr_assert_eq(web->keepalive[0].count, 6);
	cr_assert(!web->keepalive[1].on, "keepalive-client turned keepalive-upstream on");
	cr_assert(!api->keepalive[0].on, "the section's 'off' did not override");
	/* the access list: inherited whole, or replaced whole (never appended to) */
	cr_assert_eq(web->nacl, 1);
	cr_assert(!web->acl[0].allow);
	cr_assert_eq(web->acl[0].family, AF_UNSPEC);
	cr_assert_eq(api->nacl, 1, "the section's list was appended to the inherited one");
	cr_assert(api->acl[0].allow);
	/* pool keys: the top level's are every pool's defaults, the [pool]'s own and the implicit
	 */
	cr_assert_eq(cfg.pools[0].retries, 4);
	cr_assert_eq(cfg.pools[1].retries, 4);
	cr_assert_eq(cfg.pools[0].balance, BALANCE_LEASTCONN);
	cr_assert_eq(cfg.pools[1].balance, BALANCE_ROUNDROBIN);
	cr_assert_eq(cfg.pools[0].connect_timeout_ms, 5000);
	cr_assert_eq(cfg.pools[1].connect_timeout_ms, 750);
	cr_assert_eq(cfg.pools[0].nupstreams, 2);
	cr_assert_eq(cfg.pools[0].upstreams[0].weight, 2);
	cr_assert(!cfg.pools[0].upstreams[0].backup);
	cr_assert_eq(cfg.pools[0].upstreams[1].hp.port, 9009);
	cr_assert_eq(cfg.pools[0].upstreams[1].weight, 1);
	cr_assert(cfg.pools[0].upstreams[1].backup);
	cr_assert_eq(cfg.pools[1].nupstreams, 1);
	cr_assert_eq(cfg.pools[1].upstreams[0].hp.port, 9000);
	/* no sni routes anywhere */
	cr_assert_eq(web->nsni_routes + api->nsni_routes, 0);
}

Test(config, top_level_listener_beside_sections)
{
	struct config cfg;

	ok_text(&cfg, "listen 127.0.0.1:7000\n"	  /* 1 */
		      "upstream 127.0.0.1:9000\n" /* 2 */
		      "idle-timeout 5000\n"	  /* 3 */
		      "drain-timeout 0\n"	  /* 4 */
		      "[listener b]\n"		  /* 5 */
		      "listen 127.0.0.1:7001\n"	  /* 6 */
		      "upstream 127.0.0.1:9001\n" /* 7 */
		      "drain-timeout 5\n");	  /* 8 */
	cr_assert_eq(cfg.nlisteners, 2);
	/* the top-level listener comes first, named default, placed at its listen line */
	cr_assert_str_eq(cfg.listeners[0].name, "default");
	cr_assert_str_eq(cfg.listeners[0].where, "test.conf:1");
	cr_assert_eq(cfg.listeners[0].listen.port, 7000);
	cr_assert_str_eq(cfg.listeners[1].name, "b");
	cr_assert_eq(cfg.listeners[0].idle_timeout_ms, 5000);
	cr_assert_eq(cfg.listeners[1].idle_timeout_ms, 5000);
	cr_assert_eq(cfg.listeners[0].drain_timeout_ms, 0);
	cr_assert_eq(cfg.listeners[1].drain_timeout_ms, 5);
	/* its pool is named default too; the top level's upstreams are not inherited by b */
	cr_assert_eq(cfg.npools, 2);
	cr_assert_str_eq(config_listener_pool(&cfg, &cfg.listeners[0])->name, "default");
	cr_assert_str_eq(config_listener_pool(&cfg, &cfg.listeners[1])->name, "b");
	cr_assert_eq(config_listener_pool(&cfg, &cfg.listeners[0])->nupstreams, 1);
	cr_assert_eq(config_listener_pool(&cfg, &cfg.listeners[0])->upstreams[0].hp.port, 9000);
	cr_assert_eq(config_listener_pool(&cfg, &cfg.listeners[1])->nupstreams, 1);
	cr_assert_eq(config_listener_pool(&cfg, &cfg.listeners[1])->upstreams[0].hp.port, 9001);

	/* the top-level listener may use a named pool too, defined after it */
	ok_text(&cfg, "listen 127.0.0.1:7000\n"
		      "pool p\n"
		      "[pool p]\n"
		      "upstream 127.0.0.1:9000\n");
	cr_assert_eq(cfg.nlisteners, 1);
	cr_assert_eq(cfg.npools, 1);
	cr_assert_str_eq(config_listener_pool(&cfg, &cfg.listeners[0])->name, "p");
}

Test(config, command_line_overrides_top_level_and_is_the_sections_default)
{
	char path[PATH_MAX], err[512];
	struct config cfg;
	const struct config_listener *a, *b;

	conf_file(path, "idle-timeout 1000\n"
			"retries 1\n"
			"deny all\n"
			"[listener a]\n"
			"listen 127.0.0.1:7001\n"
			"upstream 127.0.0.1:9001\n"
			"[listener b]\n"
			"listen 127.0.0.1:7002\n"
			"upstream 127.0.0.1:9002\n"
			"idle-timeout 3000\n"
			"retries 3\n"
			"deny all\n"
			"allow all\n");
	/* the file alone */
	cr_assert_eq(PARSE(&cfg, err, "--config", path), CONFIG_OK, "%s", err);
	cr_assert_eq(cfg.nlisteners, 2);
	a = &cfg.listeners[0];
	b = &cfg.listeners[1];
	cr_assert_eq(a->idle_timeout_ms, 1000);
	cr_assert_eq(config_listener_pool(&cfg, a)->retries, 1);
	cr_assert_eq(a->nacl, 1);
	cr_assert(!a->acl[0].allow);
	cr_assert_eq(b->nacl, 2, "deny then allow: two entries in order");
	cr_assert(!b->acl[0].allow);
	cr_assert(b->acl[1].allow);

	/* the command line replaces the top level's values, so the sections inherit its */
	cr_assert_eq(PARSE(&cfg, err, "--config", path, "--idle-timeout", "2000", "--retries", "2",
			   "--allow", "all", "--keepalive-upstream", "5:6:7"),
		     CONFIG_OK, "%s", err);
	cr_assert_eq(cfg.nlisteners, 2, "the command line made a listener without --listen");
	a = &cfg.listeners[0];
	b = &cfg.listeners[1];
	cr_assert_eq(a->idle_timeout_ms, 2000);
	cr_assert_eq(config_listener_pool(&cfg, a)->retries, 2);
	cr_assert_eq(a->nacl, 1, "the command line's list was appended to the file's");
	cr_assert(a->acl[0].allow);
	cr_assert(a->keepalive[1].on);
	cr_assert_eq(a->keepalive[1].idle_s, 5);
	cr_assert_eq(a->keepalive[1].interval_s, 6);
	cr_assert_eq(a->keepalive[1].count, 7);
	/* a section's own values still win */
	cr_assert_eq(b->idle_timeout_ms, 3000);
	cr_assert_eq(config_listener_pool(&cfg, b)->retries, 3);
	cr_assert_eq(b->nacl, 2);
	cr_assert(!b->acl[0].allow);
	cr_assert(b->keepalive[1].on, "a default from the command line not inherited");

	/* --listen/--upstream on the command line add the top-level listener 'default' */
	cr_assert_eq(PARSE(&cfg, err, "--config", path, "--listen", "127.0.0.1:7000", "--upstream",
			   "127.0.0.1:9000", "--idle-timeout", "2000"),
		     CONFIG_OK, "%s", err);
	cr_assert_eq(cfg.nlisteners, 3);
	cr_assert_str_eq(cfg.listeners[0].name, "default");
	cr_assert_str_eq(cfg.listeners[0].where, "command line");
	cr_assert_eq(cfg.listeners[0].idle_timeout_ms, 2000);
	cr_assert_str_eq(config_listener_pool(&cfg, &cfg.listeners[0])->name, "default");
	cr_assert_eq(config_listener_pool(&cfg, &cfg.listeners[0])->retries, 1,
		     "the file's top-level retries is the default pool's too");
	cr_assert_str_eq(cfg.listeners[1].name, "a");
	cr_assert_eq(cfg.listeners[1].idle_timeout_ms, 2000);
	unlink(path);
}

Test(config, command_line_errors_with_sections)
{
	char path[PATH_MAX], err[512], want[PATH_MAX + 256];
	struct config cfg;

	conf_file(path, "[listener a]\n"
			"listen 127.0.0.1:7001\n"
			"upstream 127.0.0.1:9001\n");
	/* --upstream alone: it belongs to the top-level listener, which has no --listen */
	cr_assert_eq(PARSE(&cfg, err, "--config", path, "--upstream", "127.0.0.1:9"), CONFIG_USAGE);
	cr_assert_str_eq(err, "'upstream' at the top level belongs to the top-level listener, "
			      "which has no 'listen'");
	/* --listen on a section's address: both named */
	cr_assert_eq(PARSE(&cfg, err, "--config", path, "--listen", "127.0.0.1:7001", "--upstream",
			   "127.0.0.1:9"),
		     CONFIG_USAGE);
	snprintf(want, sizeof(want),
		 "%s:1: listener 'a' listens on 127.0.0.1:7001, as does listener 'default' "
		 "(command line)",
		 path);
	cr_assert_str_eq(err, want);
	/* pool is a file-only key */
	cr_assert_eq(PARSE(&cfg, err, "--config", path, "--pool", "a"), CONFIG_USAGE);
	cr_assert_str_eq(err, "--pool belongs in a config file's [listener] section");
	unlink(path);
}

Test(config, pool_references)
{
	struct config cfg;

	/* a forward reference, and two listeners sharing one pool */
	ok_text(&cfg, "[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "pool shared\n"
		      "[listener b]\n"
		      "listen 127.0.0.1:7002\n"
		      "pool shared\n"
		      "[pool shared]\n"
		      "upstream 127.0.0.1:9001\n");
	cr_assert_eq(cfg.npools, 1);
	cr_assert_eq(cfg.listeners[0].pool, 0);
	cr_assert_eq(cfg.listeners[1].pool, 0);
	/* a listener and a [pool] may share a name when the listener has no upstream lines */
	ok_text(&cfg, "[pool api]\n"
		      "upstream 127.0.0.1:9001\n"
		      "[listener api]\n"
		      "listen 127.0.0.1:7001\n"
		      "pool api\n");
	cr_assert_eq(cfg.npools, 1);
	cr_assert_eq(cfg.listeners[0].pool, 0);
	file_error_is("[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "pool nope\n",
		      "test.conf:3: listener 'a': no [pool nope] section");
	/* another listener's implicit pool is not a [pool] section */
	file_error_is("[listener web]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "[listener b]\n"
		      "listen 127.0.0.1:7002\n"
		      "pool web\n",
		      "test.conf:6: listener 'b': no [pool web] section");
	file_error_is("[listener b]\n"
		      "listen 127.0.0.1:7002\n"
		      "pool web\n"
		      "[listener web]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n",
		      "test.conf:3: listener 'b': no [pool web] section");
	file_error_is("listen 127.0.0.1:7000\n"
		      "pool nope\n",
		      "test.conf:2: no [pool nope] section");
	file_error_is("[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "pool bad/name\n",
		      "test.conf:3: pool 'bad/name': expected a name of 1-32 letters, digits, "
		      "'_', '.', '-'");
}

Test(config, implicit_pool_per_listener_named_after_it)
{
	struct config cfg;

	ok_text(&cfg, "[listener one]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "upstream 127.0.0.1:9002,weight=5\n"
		      "balance hash\n"
		      "health-interval 250\n"
		      "[listener two]\n"
		      "listen 127.0.0.1:7002\n"
		      "upstream 127.0.0.1:9003\n");
	cr_assert_eq(cfg.npools, 2);
	cr_assert_str_eq(cfg.pools[0].name, "one");
	cr_assert_str_eq(cfg.pools[1].name, "two");
	cr_assert_eq(cfg.listeners[0].pool, 0);
	cr_assert_eq(cfg.listeners[1].pool, 1);
	cr_assert_eq(cfg.pools[0].nupstreams, 2);
	cr_assert_eq(cfg.pools[0].upstreams[1].weight, 5);
	cr_assert_eq(cfg.pools[0].balance, BALANCE_HASH);
	cr_assert_eq(cfg.pools[0].health_interval_ms, 250);
	/* pool keys in one listener's section are its own pool's only */
	cr_assert_eq(cfg.pools[1].balance, BALANCE_ROUNDROBIN);
	cr_assert_eq(cfg.pools[1].health_interval_ms, 0);
	cr_assert_eq(cfg.pools[1].nupstreams, 1);
	/* an implicit pool named like a [pool] section */
	file_error_is("[pool one]\n"
		      "upstream 127.0.0.1:9000\n"
		      "[listener one]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n",
		      "test.conf:3: listener 'one' has upstream lines, so it has a pool of that "
		      "name; [pool one] (test.conf:1) clashes with it");
}

Test(config, sni_routes)
{
	struct config cfg;
	const struct config_listener *l;

	ok_text(&cfg, "[pool app]\n"			/* 1 */
		      "upstream 127.0.0.1:9001\n"	/* 2 */
		      "[pool api]\n"			/* 3 */
		      "upstream 127.0.0.1:9002\n"	/* 4 */
		      "[listener tls]\n"		/* 5 */
		      "listen 127.0.0.1:8443\n"		/* 6 */
		      "sni-route App.Example.COM app\n" /* 7 */
		      "sni-route *.example.com=api\n"	/* 8 */
		      "sni-route b.example.com = app\n" /* 9 */
		      "sni-route\tc.example.com\tapi\n" /* 10 */
		      "sni-missing close\n"		/* 11 */
		      "sni-timeout 250\n");		/* 12 */
	l = &cfg.listeners[0];
	cr_assert_eq(cfg.nlisteners, 1);
	cr_assert_eq(cfg.npools, 2);
	cr_assert_eq(l->pool, CONFIG_NO_POOL, "no pool/upstream lines: no default pool");
	cr_assert_null(config_listener_pool(&cfg, l));
	cr_assert_eq(l->nsni_routes, 4);
	cr_assert_str_eq(l->sni_routes[0].pattern, "app.example.com", "not lower-cased");
	cr_assert_eq(l->sni_routes[0].pool, 0);
	cr_assert_str_eq(l->sni_routes[1].pattern, "*.example.com");
	cr_assert_eq(l->sni_routes[1].pool, 1);
	cr_assert_str_eq(l->sni_routes[2].pattern, "b.example.com");
	cr_assert_eq(l->sni_routes[2].pool, 0);
	cr_assert_str_eq(l->sni_routes[3].pattern, "c.example.com");
	cr_assert_eq(l->sni_routes[3].pool, 1);
	cr_assert(l->sni_missing_close);
	cr_assert_eq(l->sni_timeout_ms, 250);

	/* a default pool: named, or the listener's own upstream lines; the defaults */
	ok_text(&cfg, "[pool app]\n"
		      "upstream 127.0.0.1:9001\n"
		      "[pool fallback]\n"
		      "upstream 127.0.0.1:9002\n"
		      "[listener a]\n"
		      "listen 127.0.0.1:8443\n"
		      "sni-route a.example.com app\n"
		      "pool fallback\n"
		      "[listener b]\n"
		      "listen 127.0.0.1:8444\n"
		      "sni-route a.example.com app\n"
		      "upstream 127.0.0.1:9003\n");
	cr_assert_str_eq(config_listener_pool(&cfg, &cfg.listeners[0])->name, "fallback");
	cr_assert_str_eq(config_listener_pool(&cfg, &cfg.listeners[1])->name, "b");
	cr_assert(!cfg.listeners[0].sni_missing_close);
	cr_assert_eq(cfg.listeners[0].sni_timeout_ms, 5000);
	cr_assert_eq(cfg.listeners[1].sni_routes[0].pool, 0);

	/* routes name [pool] sections only */
	file_error_is("[listener web]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "[listener tls]\n"
		      "listen 127.0.0.1:8443\n"
		      "sni-route a.example.com web\n",
		      "test.conf:6: listener 'tls': sni-route to 'web': no [pool web] section");
	file_error_is("[listener tls]\n"
		      "listen 127.0.0.1:8443\n"
		      "sni-route a.example.com nope\n",
		      "test.conf:3: listener 'tls': sni-route to 'nope': no [pool nope] section");
	file_error_is("listen 127.0.0.1:8443\n"
		      "sni-route a.example.com nope\n",
		      "test.conf:2: sni-route to 'nope': no [pool nope] section");
	file_error_is(
		"[listener tls]\n"
		"listen 127.0.0.1:8443\n"
		"sni-route a.example.com\n",
		"test.conf:3: --sni-route 'a.example.com': expected NAME POOL (or NAME=POOL), "
		"POOL a [pool] section's name");
	file_error_is("[listener tls]\n"
		      "listen 127.0.0.1:8443\n"
		      "sni-route a.example.com api extra\n",
		      "test.conf:3: --sni-route 'a.example.com api extra': expected NAME POOL (or "
		      "NAME=POOL), POOL a [pool] section's name");
	file_error_is("[listener tls]\n"
		      "listen 127.0.0.1:8443\n"
		      "sni-route =api\n",
		      "test.conf:3: --sni-route 'api': expected NAME POOL (or NAME=POOL), POOL a "
		      "[pool] section's name");
	/* no NAME at all (only possible on the command line: the file trims the value) */
	USAGE("--sni-route '=api': expected NAME POOL (or NAME=POOL)", "--sni-route", "=api");
	file_error_is("[listener tls]\n"
		      "listen 127.0.0.1:8443\n"
		      "sni-route a.example.com api\n"
		      "sni-missing drop\n",
		      "test.conf:4: --sni-missing 'drop': expected default or close");
}

Test(config, access_list_replacement)
{
	struct config cfg;

	/* one list: allow and deny lines in order; a section's list replaces the inherited */
	ok_text(&cfg, "allow all\n"
		      "deny all\n"
		      "[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "[listener b]\n"
		      "listen 127.0.0.1:7002\n"
		      "upstream 127.0.0.1:9002\n"
		      "deny all\n");
	cr_assert_eq(cfg.listeners[0].nacl, 2);
	cr_assert(cfg.listeners[0].acl[0].allow);
	cr_assert(!cfg.listeners[0].acl[1].allow);
	cr_assert_eq(cfg.listeners[1].nacl, 1, "deny in a section kept the inherited allow");
	cr_assert(!cfg.listeners[1].acl[0].allow);
	/* a section that gives only allow lines also replaces an inherited deny list */
	ok_text(&cfg, "deny all\n"
		      "[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "allow all\n");
	cr_assert_eq(cfg.listeners[0].nacl, 1);
	cr_assert(cfg.listeners[0].acl[0].allow);
	/* no list: everyone */
	ok_text(&cfg, "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n");
	cr_assert_eq(cfg.listeners[0].nacl, 0);
}

Test(config, keepalive_values_and_errors)
{
	struct config cfg;
	static const char *const bad[] = { "60:10",   "60",	   "0:10:6",	"60:0:6",
					   "60:10:0", "60:10:128", "32768:1:1", "1:32768:1",
					   "a:b:c",   "60:10:6:1", "60::6",	":10:6",
					   "60:10:",  "OFF",	   "on",	"-1:10:6" };

	ok_text(&cfg, "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "keepalive-client 32767:32767:127\n"
		      "keepalive-upstream 1:1:1\n");
	cr_assert(cfg.listeners[0].keepalive[0].on);
	cr_assert_eq(cfg.listeners[0].keepalive[0].idle_s, 32767);
	cr_assert_eq(cfg.listeners[0].keepalive[0].interval_s, 32767);
	cr_assert_eq(cfg.listeners[0].keepalive[0].count, 127);
	cr_assert(cfg.listeners[0].keepalive[1].on);
	cr_assert_eq(cfg.listeners[0].keepalive[1].idle_s, 1);
	cr_assert_eq(cfg.listeners[0].keepalive[1].count, 1);
	/* default off; "off" explicit */
	ok_text(&cfg, "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "keepalive-upstream off\n");
	cr_assert(!cfg.listeners[0].keepalive[0].on);
	cr_assert(!cfg.listeners[0].keepalive[1].on);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char t[256], want[256];

		snprintf(t, sizeof(t),
			 "listen 127.0.0.1:7001\nupstream 127.0.0.1:9001\n"
			 "keepalive-client %s\n",
			 bad[i]);
		snprintf(want, sizeof(want),
			 "test.conf:3: --keepalive-client '%s': expected IDLE:INTERVAL:COUNT in "
			 "seconds (each >= 1, count <= 127) or off",
			 bad[i]);
		file_error_is(t, want);
	}
	USAGE("--keepalive-upstream '1:2': expected IDLE:INTERVAL:COUNT", "--keepalive-upstream",
	      "1:2");
}

Test(config, unix_mode_values_and_errors)
{
	struct config cfg;
	static const char *const bad[] = { "0778", "01000", "1000", "-1",  "+7",
					   "abc",  "0x1",   "9",    "07a", "0" };
	static const struct {
		const char *v;
		uint32_t mode;
	} good[] = { { "0660", 0660 }, { "600", 0600 }, { "0777", 0777 }, { "00640", 0640 } };

	/* a top-level value is the default of every section (and, as a default, no error on a
	 * TCP section): the octal parse seen through the inheritance */
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		char t[256];

		snprintf(t, sizeof(t),
			 "unix-mode %s\n[listener t]\nlisten 127.0.0.1:7001\n"
			 "upstream 127.0.0.1:9001\n",
			 good[i].v);
		ok_text(&cfg, t);
		cr_assert_eq(cfg.listeners[0].unix_mode, good[i].mode, "unix-mode %s gave 0%o",
			     good[i].v, cfg.listeners[0].unix_mode);
	}
	ok_text(&cfg, "listen 127.0.0.1:7001\nupstream 127.0.0.1:9001\n");
	cr_assert_eq(cfg.listeners[0].unix_mode, 0666, "default");
	/* a bad value is refused at its line, whatever the listener */
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char t[256], want[256];

		snprintf(t, sizeof(t),
			 "[listener a]\nlisten 127.0.0.1:7001\nupstream 127.0.0.1:9001\n"
			 "unix-mode %s\n",
			 bad[i]);
		snprintf(want, sizeof(want),
			 "test.conf:4: --unix-mode '%s': expected octal permissions from 0001 to "
			 "0777, such as 0660",
			 bad[i]);
		file_error_is(t, want);
	}
	USAGE("--unix-mode '8': expected octal permissions from 0001 to 0777, such as 0660",
	      "--unix-mode", "8");
}

/* Whether addr_parse knows unix: addresses (the unix branch); until then the tests that need
 * a unix: listener skip, saying so. */
static bool unix_addresses_parsed(void)
{
	struct hostport hp;
	const char *why;

	return addr_parse("unix:/tmp/uproxy-test.sock", &hp, &why) == 0 && hp.unix_sock;
}

Test(config, unix_listener_mode_and_duplicate_path)
{
	struct config cfg;

	if (!unix_addresses_parsed())
		cr_skip_test("addr_parse does not know unix: addresses yet (unix branch)");
	ok_text(&cfg, "listen unix:/tmp/uproxy-test.sock\n"
		      "upstream 127.0.0.1:9001\n");
	cr_assert(cfg.listeners[0].listen.unix_sock);
	cr_assert_eq(cfg.listeners[0].unix_mode, 0666, "default");
	ok_text(&cfg, "listen unix:/tmp/uproxy-test.sock\n"
		      "upstream 127.0.0.1:9001\n"
		      "unix-mode 0660\n");
	cr_assert_eq(cfg.listeners[0].unix_mode, 0660);
	ok_text(&cfg, "unix-mode 0600\n"
		      "[listener u]\n"
		      "listen unix:/tmp/uproxy-test.sock\n"
		      "upstream 127.0.0.1:9001\n"
		      "[listener v]\n"
		      "listen unix:/tmp/uproxy-test2.sock\n"
		      "upstream 127.0.0.1:9001\n"
		      "unix-mode 0640\n");
	cr_assert_eq(cfg.listeners[0].unix_mode, 0600);
	cr_assert_eq(cfg.listeners[1].unix_mode, 0640);
	file_error_is("[listener a]\n"
		      "listen unix:/tmp/x.sock\n"
		      "upstream 127.0.0.1:9001\n"
		      "[listener b]\n"
		      "listen unix:/tmp/x.sock\n"
		      "upstream 127.0.0.1:9001\n",
		      "test.conf:4: listener 'b' listens on unix:/tmp/x.sock, as does listener "
		      "'a' (test.conf:1)");
	/* a unix: listener and a TCP one never clash */
	ok_text(&cfg, "[listener a]\n"
		      "listen unix:/tmp/x.sock\n"
		      "upstream 127.0.0.1:9001\n"
		      "[listener b]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n");
}

Test(config, unix_upstream_with_backup)
{
	struct config_upstream u;
	const char *why = NULL;

	if (!unix_addresses_parsed())
		cr_skip_test("addr_parse does not know unix: addresses yet (unix branch)");
	cr_assert_eq(config_parse_upstream("unix:/run/x.sock,backup", &u, &why), 0, "%s", why);
	cr_assert(u.hp.unix_sock);
	cr_assert(u.backup);
	cr_assert_eq(config_parse_upstream("unix:/run/x.sock,weight=9", &u, &why), 0, "%s", why);
	cr_assert(!u.backup);
	cr_assert_eq(u.weight, 9);
}

Test(config, upstream_backup_and_weight_in_any_order)
{
	struct config_upstream u;
	const char *why = NULL;
	struct config cfg;

	cr_assert_eq(config_parse_upstream("a:1,backup,weight=3", &u, &why), 0, "%s", why);
	cr_assert(u.backup);
	cr_assert_eq(u.weight, 3);
	cr_assert_eq(config_parse_upstream("a:1,weight=4,backup", &u, &why), 0, "%s", why);
	cr_assert(u.backup);
	cr_assert_eq(u.weight, 4);
	cr_assert_eq(config_parse_upstream("a:1,backup", &u, &why), 0, "%s", why);
	cr_assert(u.backup);
	cr_assert_eq(u.weight, 1);
	cr_assert_eq(config_parse_upstream("[::1]:2,weight=256", &u, &why), 0, "%s", why);
	cr_assert(!u.backup, "backup left over from the last parse");
	cr_assert_eq(u.weight, 256);
	cr_assert_lt(config_parse_upstream("a:1,backupx", &u, &why), 0);
	cr_assert_str_eq(why, "expected ',weight=N' or ',backup' after the address");
	cr_assert_lt(config_parse_upstream("a:1,", &u, &why), 0);
	cr_assert_str_eq(why, "expected ',weight=N' or ',backup' after the address");
	cr_assert_lt(config_parse_upstream("a:1,weight=", &u, &why), 0);
	cr_assert_lt(config_parse_upstream("a:1,backup,weight=0", &u, &why), 0);
	cr_assert_str_eq(why, "weight must be a whole number from 1 to 256");
	ok_text(&cfg, "[pool p]\n"
		      "upstream 127.0.0.1:9001,backup,weight=7\n"
		      "upstream 127.0.0.1:9002,weight=2\n"
		      "[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "pool p\n");
	cr_assert(cfg.pools[0].upstreams[0].backup);
	cr_assert_eq(cfg.pools[0].upstreams[0].weight, 7);
	cr_assert(!cfg.pools[0].upstreams[1].backup);
	cr_assert_eq(cfg.pools[0].upstreams[1].weight, 2);
	file_error_is("[pool p]\n"
		      "upstream 127.0.0.1:9001,weight=2,spare\n",
		      "test.conf:2: --upstream '127.0.0.1:9001,weight=2,spare': expected "
		      "',weight=N' or ',backup' after the address");
}

Test(config, per_listener_options)
{
	struct config cfg;
	const struct config_listener *l;

	ok_text(&cfg, "[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "max-conns-per-client 100\n"
		      "rate-per-client 50\n"
		      "rate-burst 70\n"
		      "client-table-size 64\n"
		      "client-table-full closed\n"
		      "access-log /tmp/a.log\n"
		      "log-format json\n"
		      "send-proxy v1\n"
		      "accept-proxy\n"
		      "fin-timeout 9\n"
		      "[listener b]\n"
		      "listen 127.0.0.1:7002\n"
		      "upstream 127.0.0.1:9002\n");
	l = &cfg.listeners[0];
	cr_assert_eq(l->max_conns_per_client, 100);
	cr_assert_eq(l->rate_per_client, 50);
	cr_assert_eq(l->rate_burst, 70);
	cr_assert_eq(l->client_table_size, 64);
	cr_assert(!l->client_table_fail_open);
	cr_assert_str_eq(l->access_log, "/tmp/a.log");
	cr_assert(l->log_json);
	cr_assert_eq(l->send_proxy, 1);
	cr_assert(l->accept_proxy);
	cr_assert_eq(l->fin_timeout_ms, 9);
	/* b has every default */
	l = &cfg.listeners[1];
	cr_assert_eq(l->max_conns_per_client, 0);
	cr_assert_eq(l->rate_per_client, 0);
	cr_assert_eq(l->rate_burst, 0);
	cr_assert_eq(l->client_table_size, CONFIG_DEFAULT_CLIENT_TABLE);
	cr_assert(l->client_table_fail_open);
	cr_assert_str_eq(l->access_log, "");
	cr_assert(!l->log_json);
	cr_assert_eq(l->send_proxy, 0);
	cr_assert(!l->accept_proxy);
	cr_assert_eq(l->unix_mode, CONFIG_DEFAULT_UNIX_MODE);
	cr_assert_eq(l->sni_timeout_ms, CONFIG_DEFAULT_SNI_TIMEOUT_MS);
	file_error_is("listen 127.0.0.1:7001\nupstream 127.0.0.1:9001\nclient-table-size 63\n",
		      "test.conf:3: --client-table-size: 63 is out of range (64-4194304)");
	file_error_is("listen 127.0.0.1:7001\nupstream 127.0.0.1:9001\nclient-table-full maybe\n",
		      "test.conf:3: --client-table-full 'maybe': expected open or closed");
	file_error_is("listen 127.0.0.1:7001\nupstream 127.0.0.1:9001\nrate-burst 0\n",
		      "test.conf:3: --rate-burst: 0 is out of range (1-1000000)");
}

/* Every error finish(), open_section() and apply() give for the section syntax, whole. */
Test(config, section_errors_name_file_and_line)
{
	/* duplicate names */
	file_error_is("[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "[listener a]\n",
		      "test.conf:4: listener 'a' is defined twice (first at test.conf:1)");
	file_error_is("[pool p]\n"
		      "upstream 127.0.0.1:9001\n"
		      "\n"
		      "[pool p]\n",
		      "test.conf:4: pool 'p' is defined twice (first at test.conf:1)");
	/* two listeners on one address, both named; ":PORT" overlaps every host */
	file_error_is("[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "[listener b]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n",
		      "test.conf:4: listener 'b' listens on 127.0.0.1:7001, as does listener 'a' "
		      "(test.conf:1)");
	file_error_is("listen :7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "[listener b]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n",
		      "test.conf:3: listener 'b' listens on 127.0.0.1:7001, as does listener "
		      "'default' (test.conf:1)");
	/* scope */
	file_error_is("[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "workers 2\n",
		      "test.conf:3: 'workers' is a global option: put it before the first section");
	file_error_is("[pool p]\n"
		      "stats 127.0.0.1:9100\n",
		      "test.conf:2: 'stats' is a global option: put it before the first section");
	file_error_is(
		"[pool p]\n"
		"upstream 127.0.0.1:9001\n"
		"idle-timeout 5\n",
		"test.conf:3: 'idle-timeout' belongs in a [listener] section, not in [pool p]");
	file_error_is("[pool p]\n"
		      "listen 127.0.0.1:7001\n",
		      "test.conf:2: 'listen' belongs in a [listener] section, not in [pool p]");
	file_error_is("[pool p]\n"
		      "pool q\n",
		      "test.conf:2: 'pool' belongs in a [listener] section, not in [pool p]");
	file_error_is("[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "idle-timeout 5\n"
		      "idle-timeout 6\n",
		      "test.conf:4: --idle-timeout given more than once");
	/* a listener or pool without upstreams, or without an address */
	file_error_is("[listener a]\n"
		      "listen 127.0.0.1:7001\n",
		      "test.conf:1: listener 'a' has no upstream: add 'upstream ADDR' lines or "
		      "'pool NAME'");
	file_error_is("[listener a]\n"
		      "upstream 127.0.0.1:9001\n",
		      "test.conf:1: listener 'a' has no 'listen' address");
	file_error_is("[pool p]\n"
		      "balance hash\n"
		      "[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "pool p\n",
		      "test.conf:1: pool 'p' has no upstream lines");
	/* upstream lines and pool in one listener */
	file_error_is("[pool p]\n"
		      "upstream 127.0.0.1:9001\n"
		      "[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9002\n"
		      "pool p\n",
		      "test.conf:6: listener 'a' has both upstream lines and 'pool p': use one");
	file_error_is(
		"[pool p]\n"
		"upstream 127.0.0.1:9001\n"
		"[listener a]\n"
		"listen 127.0.0.1:7001\n"
		"pool p\n"
		"retries 3\n",
		"test.conf:6: 'retries' in listener 'a' without upstream lines: put it in the "
		"pool's section");
	file_error_is("listen 127.0.0.1:7000\n"
		      "upstream 127.0.0.1:9000\n"
		      "pool p\n"
		      "[pool p]\n"
		      "upstream 127.0.0.1:9001\n",
		      "test.conf:3: the top-level listener has both upstream lines and 'pool p': "
		      "use one");
	/* options that need another */
	file_error_is("[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "sni-missing close\n",
		      "test.conf:4: sni-missing needs sni-route lines in listener 'a'");
	file_error_is("[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "sni-timeout 100\n",
		      "test.conf:4: sni-timeout needs sni-route lines in listener 'a'");
	file_error_is("listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "sni-timeout 100\n",
		      "test.conf:3: sni-timeout needs sni-route lines in listener 'default'");
	file_error_is("[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "unix-mode 0600\n",
		      "test.conf:4: unix-mode applies to a unix:/PATH listener only ('a' is not "
		      "one)");
	file_error_is("[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "rate-burst 10\n",
		      "test.conf:4: rate-burst needs rate-per-client in listener 'a'");
	/* the name default */
	file_error_is("listen 127.0.0.1:7000\n"
		      "upstream 127.0.0.1:9000\n"
		      "[listener default]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n",
		      "test.conf:3: the name 'default' is taken by the top-level listener "
		      "(--listen); choose another");
	file_error_is("listen 127.0.0.1:7000\n"
		      "upstream 127.0.0.1:9000\n"
		      "[pool default]\n"
		      "upstream 127.0.0.1:9001\n",
		      "test.conf:3: the pool name 'default' is taken by the top-level upstreams");
	/* top-level upstream without a top-level listen */
	file_error_is("upstream 127.0.0.1:9000\n"
		      "[listener a]\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n",
		      "test.conf:1: 'upstream' at the top level belongs to the top-level listener, "
		      "which has no 'listen'");
	/* section headers */
	file_error_is("[server a]\n",
		      "test.conf:1: unknown section '[server]': expected [listener NAME] or [pool "
		      "NAME]");
	file_error_is("[listener a\n", "test.conf:1: expected [listener NAME] or [pool NAME]");
	file_error_is("[listener a]x\n", "test.conf:1: expected [listener NAME] or [pool NAME]");
	file_error_is(
		"[listener]\n",
		"test.conf:1: [listener ]: expected a name of 1-32 letters, digits, '_', '.', "
		"'-'");
	file_error_is("[pool a b]\n",
		      "test.conf:1: [pool a b]: expected a name of 1-32 letters, digits, '_', '.', "
		      "'-'");
	file_error_is(
		"[listener aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]\n",
		"test.conf:1: [listener aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]: expected a name of "
		"1-32 letters, digits, '_', '.', '-'");
}

Test(config, section_names_and_header_spacing)
{
	struct config cfg;

	ok_text(&cfg, "[ listener   A-b_c.9 ]  # comment\n"
		      "listen 127.0.0.1:7001\n"
		      "upstream 127.0.0.1:9001\n"
		      "[pool aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa]\n"
		      "upstream 127.0.0.1:9002\n");
	cr_assert_str_eq(cfg.listeners[0].name, "A-b_c.9");
	cr_assert_str_eq(cfg.pools[0].name, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa");
}

Test(config, section_count_limits)
{
	char *t = malloc(65536);
	size_t n = 0;

	cr_assert_not_null(t);
	/* CONFIG_MAX_LISTENERS sections fit, one more does not */
	for (int i = 0; i <= CONFIG_MAX_LISTENERS; i++)
		n += (size_t)snprintf(
			t + n, 65536 - n,
			"[listener l%d]\nlisten 127.0.0.1:%d\nupstream 127.0.0.1:9000\n", i,
			7000 + i);
	{
		char want[128];

		snprintf(want, sizeof(want), "test.conf:%d: more than %u listeners",
			 3 * CONFIG_MAX_LISTENERS + 1, CONFIG_MAX_LISTENERS);
		file_error_is(t, want);
		t[n - strlen("[listener l16]\nlisten 127.0.0.1:7016\nupstream 127.0.0.1:9000\n")] =
			'\0';
		{
			struct config cfg;

			ok_text(&cfg, t);
			cr_assert_eq(cfg.nlisteners, CONFIG_MAX_LISTENERS);
			cr_assert_eq(cfg.npools, CONFIG_MAX_LISTENERS);
		}
	}
	/* named pools plus the listeners' implicit ones count against CONFIG_MAX_POOLS */
	n = 0;
	for (int i = 0; i < CONFIG_MAX_POOLS - 1; i++)
		n += (size_t)snprintf(t + n, 65536 - n, "[pool p%d]\nupstream 127.0.0.1:9000\n", i);
	n += (size_t)snprintf(t + n, 65536 - n,
			      "[listener a]\nlisten 127.0.0.1:7001\nupstream 127.0.0.1:9000\n"
			      "[listener b]\nlisten 127.0.0.1:7002\nupstream 127.0.0.1:9000\n");
	{
		char want[128];

		snprintf(want, sizeof(want),
			 "test.conf:%d: more than %u pools (each listener with upstream lines has "
			 "its "
			 "own)",
			 2 * (CONFIG_MAX_POOLS - 1) + 4, CONFIG_MAX_POOLS);
		file_error_is(t, want);
	}
	free(t);
}

/* SIGHUP compares listeners and pools whole: the same text must give equal structs (padding
 * and unused array tails included), and any changed value an unequal one. */
Test(config, same_text_parses_to_equal_listeners_and_pools)
{
	static struct config a, b;
	char changed[sizeof(sections_conf) + 16];
	char *p;

	ok_text(&a, sections_conf);
	ok_text(&b, sections_conf);
	cr_assert_eq(a.nlisteners, b.nlisteners);
	cr_assert_eq(a.npools, b.npools);
	for (uint32_t i = 0; i < a.nlisteners; i++)
		cr_assert(config_listener_equal(&a.listeners[i], &b.listeners[i]), "listener %s",
			  a.listeners[i].name);
	for (uint32_t i = 0; i < a.npools; i++)
		cr_assert(config_pool_equal(&a.pools[i], &b.pools[i]), "pool %s", a.pools[i].name);
	/* api's idle-timeout 2222 -> 2223: api differs, web and the pools do not */
	strcpy(changed, sections_conf);
	p = strstr(changed, "idle-timeout 2222");
	cr_assert_not_null(p);
	p[strlen("idle-timeout 2222") - 1] = '3';
	ok_text(&b, changed);
	cr_assert(config_listener_equal(&a.listeners[0], &b.listeners[0]));
	cr_assert(!config_listener_equal(&a.listeners[1], &b.listeners[1]));
	for (uint32_t i = 0; i < a.npools; i++)
		cr_assert(config_pool_equal(&a.pools[i], &b.pools[i]), "pool %s", a.pools[i].name);
	/* the [pool]'s balance: only that pool differs */
	strcpy(changed, sections_conf);
	p = strstr(changed, "balance leastconn");
	cr_assert_not_null(p);
	memcpy(p, "balance random2  ", strlen("balance leastconn"));
	ok_text(&b, changed);
	cr_assert(!config_pool_equal(&a.pools[0], &b.pools[0]));
	cr_assert(config_pool_equal(&a.pools[1], &b.pools[1]));
	cr_assert(config_listener_equal(&a.listeners[0], &b.listeners[0]));
	cr_assert(config_listener_equal(&a.listeners[1], &b.listeners[1]));
}

Test(config, top_level_defaults_reach_named_pools_and_sni_routes)
{
	char path[PATH_MAX], err[512];
	struct config cfg;

	/* sni-route lines are a listener's own: at the top level they belong to the top-level
	 * listener, never to a section (which would silently turn into an SNI listener) */
	cr_assert_eq(text(&cfg,
			  "sni-route a.example.com p\n"
			  "[pool p]\n"
			  "upstream 127.0.0.1:9001\n"
			  "[listener s]\n"
			  "listen 127.0.0.1:8443\n"
			  "upstream 127.0.0.1:9002\n",
			  err, sizeof(err)),
		     CONFIG_USAGE);
	cr_assert_str_eq(err, "test.conf:1: 'sni-route' at the top level belongs to the top-level "
			      "listener, which has no 'listen'");
	/* a command-line pool option is a [pool] section's default too */
	conf_file(path, "[pool p]\n"
			"upstream 127.0.0.1:9001\n"
			"[pool q]\n"
			"upstream 127.0.0.1:9002\n"
			"connect-timeout 9\n"
			"[listener a]\n"
			"listen 127.0.0.1:7001\n"
			"pool p\n");
	cr_assert_eq(PARSE(&cfg, err, "--config", path, "--connect-timeout", "77"), CONFIG_OK, "%s",
		     err);
	cr_assert_eq(cfg.pools[0].connect_timeout_ms, 77);
	cr_assert_eq(cfg.pools[1].connect_timeout_ms, 9);
	unlink(path);
}

/* ---- bugs found in src/config.c (reported to the lead): these fail until it is fixed ---- */

/* Refused, at FILE:LINE line, with an error that mentions what. */
static void refused_at(const char *t, const char *line, const char *what)
{
	struct config cfg;
	char err[1024];

	cr_assert_eq(text(&cfg, t, err, sizeof(err)), CONFIG_USAGE, "accepted:\n%s", t);
	cr_assert(strncmp(err, line, strlen(line)) == 0, "error '%s' is not at '%s'", err, line);
	cr_assert(strstr(err, what) != NULL, "error '%s' lacks '%s'", err, what);
}

/* Like a top-level upstream, a top-level 'pool' belongs to the top-level listener: without a
 * top-level listen it was silently dropped, even naming no pool at all. */
Test(config, top_level_pool_without_listen_is_refused)
{
	refused_at("pool nope\n"
		   "[listener a]\n"
		   "listen 127.0.0.1:7001\n"
		   "upstream 127.0.0.1:9001\n",
		   "test.conf:1: ", "pool");
	refused_at("pool p\n"
		   "[pool p]\n"
		   "upstream 127.0.0.1:9001\n"
		   "[listener a]\n"
		   "listen 127.0.0.1:7001\n"
		   "upstream 127.0.0.1:9002\n",
		   "test.conf:1: ", "pool");
}

/* A top-level sni-route is an error without a top-level listener, even when every section has
 * routes of its own (it was once accepted, naming a pool that does not exist). */
Test(config, top_level_sni_route_to_an_undefined_pool_is_refused)
{
	refused_at("sni-route a.example.com nope\n"
		   "[pool p]\n"
		   "upstream 127.0.0.1:9001\n"
		   "[listener a]\n"
		   "listen 127.0.0.1:7001\n"
		   "upstream 127.0.0.1:9002\n"
		   "sni-route b.example.com p\n",
		   "test.conf:1: ", "sni-route");
}

/* "FILE:LINE: ..." everywhere: the file's top-level listener without upstreams is an error at
 * its listen line, like a section's at its header. */
Test(config, top_level_listener_without_upstream_names_its_line)
{
	refused_at("\n"
		   "listen 127.0.0.1:7001\n",
		   "test.conf:2: ", "upstream");
}
