/* Unit tests for config: defaults, every option, and every usage error with its message. */
#include <criterion/criterion.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

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
	cr_assert(cfg.listen.any);
	cr_assert_eq(cfg.listen.port, 8080);
	cr_assert_str_eq(cfg.upstream.host, "127.0.0.1");
	cr_assert_eq(cfg.upstream.port, 80);
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
	cr_assert_str_eq(cfg.listen.host, "::1");
	cr_assert_eq(cfg.listen.port, 9000);
	cr_assert_str_eq(cfg.upstream.host, "localhost");
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
				"--buffers", "--max-conns", "--workers", "--help", "--version" };

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
}

Test(config, bad_addresses)
{
	USAGE("port 0", "--listen", ":0", "--upstream", "a:1");
	USAGE("out of range", "--listen", ":65536", "--upstream", "a:1");
	USAGE("--upstream 'a:0'", "--listen", ":1", "--upstream", "a:0");
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
