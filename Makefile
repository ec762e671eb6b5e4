# Makefile for multisite. GNU make + pkg-config, as Redis and HAProxy do it.
#
#   make            build build/multisited (and the other programs)
#   make run        install deps, build, serve the example zone on 127.0.0.1:5353
#   make demo       install deps, build, start the two-site demo on loopback (scripts/demo.py);
#                   make demo-failover walks through a site failure, make demo-stop ends it
#   make check      install deps, then: format check, -Werror build, unit tests, fuzz corpus
#                   replay, the same under ASan+UBSan, integration tests
#   make bench      benchmarks (bench/*.sh) that print the figures quoted in the README
#   make fuzz       libFuzzer binaries in build-fuzz/ (needs clang, libclang-rt-14-dev)
#
# Knobs: SANITIZE=address,undefined  CC=clang  WERROR=1  BUILD=dir  O=optimisation level

MS_VERSION := 0.1.0
CC ?= cc
BUILD ?= build
O ?= 2
PKGS := libknot libzscanner liburcu libuv libsodium yaml-0.1 sqlite3 libpq libcurl libmicrohttpd libmaxminddb
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS := $(shell pkg-config --libs $(PKGS) 2>/dev/null)

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wformat=2 -Wno-missing-field-initializers
CFLAGS ?= -O$(O) -g
ALL_CFLAGS := -std=gnu11 $(CFLAGS) $(WARN) -Isrc -DMS_VERSION='"$(MS_VERSION)"' \
	-D_GNU_SOURCE -fno-strict-aliasing -pthread -MMD -MP $(PKG_CFLAGS)
LDLIBS := $(PKG_LIBS) -lpthread -lm
ifeq ($(WERROR),1)
ALL_CFLAGS += -Werror
endif
ifneq ($(SANITIZE),)
ALL_CFLAGS += -fsanitize=$(SANITIZE) -fno-omit-frame-pointer -fno-sanitize-recover=all
LDFLAGS += -fsanitize=$(SANITIZE)
endif

LIB_SRCS := $(sort $(wildcard src/*/*.c))
LIB_OBJS := $(LIB_SRCS:%.c=$(BUILD)/obj/%.o)
LIB := $(BUILD)/libmultisite.a

PROG_SRCS := $(wildcard src/multisited.c src/multisitectl.c src/multisite-syncd.c src/multisite-webapp.c src/multisite-fetch.c)
PROGS := $(PROG_SRCS:src/%.c=$(BUILD)/%)

UNIT_SRCS := $(sort $(wildcard tests/unit/test_*.c))
UNIT_BINS := $(UNIT_SRCS:tests/unit/%.c=$(BUILD)/tests/%)

FUZZ_SRCS := $(sort $(wildcard tests/fuzz/fuzz_*.c))
FUZZ_REPLAY := $(FUZZ_SRCS:tests/fuzz/fuzz_%.c=$(BUILD)/fuzz/replay_%)
FUZZ_BINS := $(FUZZ_SRCS:tests/fuzz/fuzz_%.c=build-fuzz/fuzz_%)

.PHONY: all deps run check format format-check unit-test fuzz-replay integration integration-asan man install \
	bench fuzz \
	clean tests-bin demo demo-stop demo-failover

all: $(PROGS)

deps:
	@./scripts/deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(ALL_CFLAGS) -c $< -o $@

$(LIB): $(LIB_OBJS)
	@mkdir -p $(dir $@)
	rm -f $@
	ar rcs $@ $^

$(BUILD)/%: $(BUILD)/obj/src/%.o $(LIB)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(BUILD)/tests/%: $(BUILD)/obj/tests/unit/%.o $(BUILD)/obj/tests/unit/tap.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/obj/tests/unit/tap.o $(LIB) $(LDLIBS)

$(BUILD)/fuzz/replay_%: $(BUILD)/obj/tests/fuzz/fuzz_%.o $(BUILD)/obj/tests/fuzz/replay_main.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(BUILD)/obj/tests/fuzz/replay_main.o $(LIB) $(LDLIBS)

tests-bin: $(PROGS) $(UNIT_BINS) $(FUZZ_REPLAY)

run: deps
	$(MAKE) all
	$(BUILD)/multisited -c examples/multisited.yaml

# The two-site demo (docs/demo.md): everything in the background, pids and logs in run/demo/.
# DEMO_ARGS: other addresses or ports, e.g. DEMO_ARGS='--http-port 9080 --dns-port 5301'.
demo: deps
	$(MAKE) -j$(shell nproc 2>/dev/null || echo 2) all
	/usr/bin/python3 scripts/demo.py start --build $(BUILD) $(DEMO_ARGS)
demo-stop:
	/usr/bin/python3 scripts/demo.py stop
demo-failover:
	/usr/bin/python3 scripts/demo.py failover

unit-test: $(UNIT_BINS)
	@set -e; fail=0; for t in $(UNIT_BINS); do \
		echo "== $$t"; $$t || fail=1; done; \
	if [ $$fail -ne 0 ]; then echo "unit tests FAILED"; exit 1; fi

fuzz-replay: $(FUZZ_REPLAY)
	@set -e; for f in $(FUZZ_REPLAY); do \
		n=$${f##*/replay_}; echo "== $$f tests/fuzz/corpus/$$n"; \
		$$f tests/fuzz/corpus/$$n; done

integration: $(PROGS)
	MS_BUILD=$(abspath $(BUILD)) /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration

# The DNS integration tests once more against the ASan+UBSan daemon: real traffic through the
# sanitizers, and LeakSanitizer at exit (the tests require a clean exit status).
ASAN_INTEGRATION := tests/integration/test_dns_diff.py tests/integration/test_server.py \
	tests/integration/test_ctl.py tests/integration/test_status.py
integration-asan: $(PROGS)
	MS_BUILD=$(abspath $(BUILD)) /usr/bin/python3 -m pytest -q -p no:cacheprovider $(ASAN_INTEGRATION)

FORMAT_FILES = $(shell find src tests -name '*.[ch]' | sort)
format:
	clang-format -i $(FORMAT_FILES)
format-check:
	clang-format --dry-run --Werror $(FORMAT_FILES)

JOBS ?= $(shell nproc 2>/dev/null || echo 2)
check: deps
	$(MAKE) format-check
	$(MAKE) -j$(JOBS) WERROR=1 tests-bin
	$(MAKE) WERROR=1 unit-test fuzz-replay
	$(MAKE) -j$(JOBS) BUILD=build-asan SANITIZE=address,undefined WERROR=1 O=1 tests-bin
	$(MAKE) BUILD=build-asan SANITIZE=address,undefined WERROR=1 O=1 unit-test fuzz-replay
	$(MAKE) WERROR=1 integration
	$(MAKE) BUILD=build-asan SANITIZE=address,undefined WERROR=1 O=1 integration-asan

bench: deps all
	@for b in bench/*.sh; do echo "== $$b"; $$b || exit 1; done

fuzz: $(FUZZ_BINS)
build-fuzz/fuzz_%: tests/fuzz/fuzz_%.c $(LIB_SRCS)
	@mkdir -p build-fuzz
	clang -std=gnu11 -O1 -g -Isrc -D_GNU_SOURCE -DMS_VERSION='"$(MS_VERSION)"' -pthread \
		$(PKG_CFLAGS) -fsanitize=fuzzer,address,undefined -o $@ $< $(LIB_SRCS) $(LDLIBS)

# ---- install: make install [PREFIX=/usr/local] [DESTDIR=staging] ----
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
MANDIR ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
UNITDIR ?= $(PREFIX)/lib/systemd/system
MAN_PAGES := $(patsubst man/%.scd,$(BUILD)/man/%,$(wildcard man/*.scd))

$(BUILD)/man/%: man/%.scd
	@mkdir -p $(dir $@)
	scdoc < $< > $@

man: $(MAN_PAGES)

install: all man
	install -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(MANDIR)/man5 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(UNITDIR) $(DESTDIR)$(SYSCONFDIR)/multisite
	install -m 755 $(PROGS) $(DESTDIR)$(SBINDIR)/
	install -m 644 $(filter %.8,$(MAN_PAGES)) $(DESTDIR)$(MANDIR)/man8/
	install -m 644 $(filter %.5,$(MAN_PAGES)) $(DESTDIR)$(MANDIR)/man5/
	for u in packaging/systemd/*.service; do \
		sed 's|/usr/sbin/|$(SBINDIR)/|g; s|/etc/multisite/|$(SYSCONFDIR)/multisite/|g' $$u \
			> $(DESTDIR)$(UNITDIR)/$$(basename $$u); done
	test -e $(DESTDIR)$(SYSCONFDIR)/multisite/multisited.yaml || \
		install -m 644 examples/cluster-eu.yaml $(DESTDIR)$(SYSCONFDIR)/multisite/multisited.yaml

clean:
	rm -rf build build-asan build-fuzz

-include $(shell find $(BUILD)/obj -name '*.d' 2>/dev/null)
