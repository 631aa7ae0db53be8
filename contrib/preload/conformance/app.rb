# frozen_string_literal: true

# The conformance app for the Ruby helper (contrib/preload/conformance.py):
# loads the helper, registers an after-fork hook, calls serve, then, in each
# worker, prints its one-line JSON report on stdout and a line on stderr and
# sleeps until killed. The report's fields are in docs/PRELOAD.md.

require 'fiddle'
require 'json'
require_relative '../ruby/forkmaster_preload'

PR_GET_PDEATHSIG = 2
PRCTL = Fiddle::Function.new(Fiddle::Handle::DEFAULT['prctl'],
                             [Fiddle::TYPE_INT, Fiddle::TYPE_VARIADIC], Fiddle::TYPE_INT)

def pdeathsig
  buf = Fiddle::Pointer.malloc(Fiddle::SIZEOF_INT, Fiddle::RUBY_FREE)
  PRCTL.call(PR_GET_PDEATHSIG, :voidp, buf).zero? ? buf[0, Fiddle::SIZEOF_INT].unpack1('i') : nil
end

loaded_in = Process.pid
hook = { 'calls' => 0 }
ForkmasterPreload.after_fork do
  hook['calls'] += 1
  hook['pid'] = Process.pid
  hook['listen_pid'] = ENV.fetch('LISTEN_PID', nil)
end

ForkmasterPreload.serve

report = {
  'pid' => Process.pid,
  'ppid' => Process.ppid,
  'pgid' => Process.getpgrp,
  'loaded_in' => loaded_in,
  'hook_calls' => hook['calls'],
  'hook_pid' => hook['pid'],
  'hook_listen_pid' => hook['listen_pid'],
  'random' => rand(1 << 62).to_s,
  'pdeathsig' => pdeathsig,
  'runtime' => "ruby #{RUBY_VERSION}",
  'env' => ENV.to_h.select { |k, _| k.start_with?('FORKMASTER_', 'LISTEN_') || k == 'NOTIFY_SOCKET' }
}
$stdout.puts(JSON.generate(report))
$stdout.flush
warn("conformance-stderr pid=#{Process.pid}")
$stderr.flush
sleep
