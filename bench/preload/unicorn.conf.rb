# frozen_string_literal: true

# unicorn's settings for bench/preload.sh. The listen address, worker count
# and files come from the environment the script sets.
worker_processes Integer(ENV.fetch('HEAVY_WORKERS'))
listen ENV.fetch('HEAVY_LISTEN'), backlog: 1024
pid ENV.fetch('HEAVY_PID_FILE')
preload_app true
timeout 60

# heavy.rb's readiness marker, written as each worker is about to serve.
after_fork do |_server, _worker|
  path = ENV.fetch('HEAVY_READY_FILE', '')
  File.open(path, 'a') { |f| f.puts(Process.pid) } unless path.empty?
end
