/* Unit tests for config: defaults, every option, and every usage error with its message. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
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

	cr_assert_eq(PARSE(&cfg, err, "--listen", ":8080", "--upstream", "127.0.0.1:80"),
		     CONFIG_OK, "%s", err);
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
	const char *names[] = { "--listen", "--upstream", "--log-level", "--buffer-size",
				"--buffers", "--max-conns", "--workers", "--help", "--version",
				"--config", "--balance", "--connect-timeout", "--retries",
				"--fail-threshold", "--fail-timeout", "--health-interval",
				"--resolve-interval", "--idle-timeout", "--fin-timeout",
				"--drain-timeout" };

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
			   "--fail-threshold", "1", "--fail-timeout", "2", "--health-interval", "500",
			   "--resolve-interval", "0", "--idle-timeout", "1000", "--fin-timeout", "700",
			   "--drain-timeout", "0"),
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
	cr_assert_eq(cfg.pools[0].nupstreams, 1, "the command line's --upstream replaces the file's list");
	cr_assert_str_eq(cfg.pools[0].upstreams[0].hp.host, "c");
	cr_assert_eq(PARSE(&cfg, err, "--config", path), CONFIG_OK, "%s", err);
	cr_assert_eq(cfg.pools[0].nupstreams, 2);
	cr_assert_eq(cfg.pools[0].retries, 4);
	unlink(path);
	USAGE("cannot read config file '/nonexistent/x.conf'", "--config", "/nonexistent/x.conf");
}
