# frozen_string_literal: true

# unicorn's rackup for bench/preload/heavy.rb: the same app, loaded once in
# the master (preload_app true in unicorn.conf.rb).
require_relative 'heavy'
run Heavy::APP
