# fuseexport: a C compiler and libc headers are all the build needs.
PREFIX = /usr/local
BINDIR = $(PREFIX)/sbin
MANDIR = $(PREFIX)/share/man
CC = cc
CFLAGS = -O2 -g -Wall -Wextra
LDFLAGS =
LDLIBS = -pthread
MUSLCC = musl-gcc

all: fuseexport

fuseexport: fuseexport.c fuseexport.h
	$(CC) $(CFLAGS) $(LDFLAGS) -o $@ fuseexport.c $(LDLIBS)

# a static binary for rescue shells and initramfs
static: fuseexport-static
fuseexport-static: fuseexport.c fuseexport.h
	$(MUSLCC) -static -Os -Wall -Wextra -o $@ fuseexport.c
	strip $@

test: fuseexport
	./test.sh

# fio side by side: the file, fuseexport in each mode, qemu-storage-daemon
bench: fuseexport
	tests/bench.sh

install: fuseexport
	install -D -m 755 fuseexport $(DESTDIR)$(BINDIR)/fuseexport
	install -D -m 644 fuseexport.1 $(DESTDIR)$(MANDIR)/man1/fuseexport.1
	ln -sf fuseexport $(DESTDIR)$(BINDIR)/mount.fuseexport
	ln -sf fuseexport $(DESTDIR)$(BINDIR)/mount.fuse.fuseexport

clean:
	rm -f fuseexport fuseexport-static

.PHONY: all static test bench install clean
